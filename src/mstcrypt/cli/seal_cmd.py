"""``mstcrypt seal keygen|make|stamp|verify``: electronic seals (T/ZSA 37-2020 §7.4,
GB/T 38540) with two-party SM2 keys shared between the soft token and the seal server.
See docs/seal.md."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape

from mstcrypt.cli._common import (
    EXIT_INVALID,
    console,
    err_console,
    fail,
    open_token,
    read_input,
    write_output,
)
from mstcrypt.errors import MstCryptError
from mstcrypt.pki import Certificate, load_certificates

app = typer.Typer(
    help="Electronic seals (GB/T 38540) with two-party SM2 keys: keygen, make, stamp, verify.",
    no_args_is_help=True,
)

ServerOpt = Annotated[str, typer.Option("--server", help="Platform URL.")]
TokenOpt = Annotated[str, typer.Option("--token", help="Soft token file (the key share).")]
PinOpt = Annotated[str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN")]
SessionOpt = Annotated[
    str,
    typer.Option(
        "--session",
        envvar="MSTCRYPT_SESSION",
        help="Session token (§7.3, from `mstcrypt login`), or @FILE to read it from a file.",
    ),
]
ContainerOpt = Annotated[str, typer.Option("--container", help="Token container of the seal key.")]
CaOpt = Annotated[str | None, typer.Option("--ca-file", help="Trusted root CA (PEM).")]


def _session(value: str) -> str:
    if value.startswith("@"):
        return read_input(value[1:]).decode("ascii", "replace").strip()
    return value.strip()


def _pem_certs(path: str) -> list[Certificate]:
    certs = load_certificates(read_input(path))
    if not certs:
        fail(f"{path}: no PEM certificate found")
    return certs


def _client(server: str, ca_file: str | None, token: Any = None) -> Any:
    from mstcrypt.client import Client, token_anchors

    anchors = _pem_certs(ca_file) if ca_file else (token_anchors(token) if token else [])
    return Client(server, anchors=anchors)


def _terminal(server: str, token: str, pin: str | None, session: str, ca_file: str | None):
    from mstcrypt.apps.seal.terminal import SealTerminal

    tok = open_token(token, pin)
    client = _client(server, ca_file, tok)
    return client, SealTerminal(client._http, _session(session), tok)


@app.command("keygen")
def keygen_command(
    server: ServerOpt,
    token: TokenOpt,
    session: SessionOpt,
    pin: PinOpt = None,
    container: ContainerOpt = "seal",
    common_name: Annotated[
        str | None, typer.Option("--cn", help="Name in the certificate request.")
    ] = None,
    ca_file: CaOpt = None,
) -> None:
    """Generate a two-party seal key with the seal server (the share stays in the token,
    the server's in its SS-CC) and get its stamper certificate."""
    client, t = _terminal(server, token, pin, session, ca_file)
    with client:
        key_id, public_key = t.create_key(container)
        cert = t.certify(container, common_name or container)
    console.print(f"seal key {key_id} in container {container!r}")
    console.print(f"joint public key {public_key.to_bytes().hex()}")
    console.print(f"stamper certificate {cert.serial:x}: {escape(cert.subject_str)}")


def _default_picture(name: str) -> bytes:
    """A round red seal with a star, for demos (real seals upload their own image)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((8, 8, 292, 292), outline=(210, 20, 20, 255), width=16)
    d.regular_polygon((150, 150, 55), 5, fill=(210, 20, 20, 255))
    label = name.encode("ascii", "replace").decode()[:24]
    d.text((150, 240), label, fill=(210, 20, 20, 255), anchor="mm")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


@app.command("make")
def make_command(
    server: ServerOpt,
    name: Annotated[str, typer.Option("--name", help="Seal name (unit and purpose).")],
    stampers: Annotated[
        list[str], typer.Option("--stamper", help="Owner allowed to stamp (repeat).")
    ],
    operator_token: Annotated[
        str,
        typer.Option(
            "--operator-token",
            envvar="MSTCRYPT_OPERATOR_TOKEN",
            help="Administrator credential (session token or static), or @FILE.",
        ),
    ],
    picture: Annotated[
        str | None, typer.Option("--picture", help="Seal image (PNG/JPEG); default: drawn.")
    ] = None,
    days: Annotated[int, typer.Option("--days", min=1, max=3650)] = 365,
    size_mm: Annotated[int, typer.Option("--size", min=10, max=100, help="Size in mm.")] = 40,
    personal: Annotated[bool, typer.Option("--personal", help="A personal seal.")] = False,
    ca_file: CaOpt = None,
    out: Annotated[str | None, typer.Option("--out", help="Write the DER SESeal here.")] = None,
) -> None:
    """Make a seal (administrator): image, validity, authorised stampers; the seal
    server signs it with the seal maker's key."""
    import base64

    image = read_input(picture) if picture else _default_picture(name)
    kind = "png" if image.startswith(b"\x89PNG") else "jpg"
    now = datetime.now(UTC)
    body = {
        "name": name,
        "picture": base64.b64encode(image).decode(),
        "picture_type": kind,
        "width": size_mm,
        "height": size_mm,
        "valid_start": (now - timedelta(minutes=5)).isoformat(),
        "valid_end": (now + timedelta(days=days)).isoformat(),
        "stampers": stampers,
        "seal_type": 2 if personal else 1,
    }
    headers = {"Authorization": f"Bearer {_session(operator_token)}"}
    with _client(server, ca_file) as c:
        r = c._request("POST", "/admin/seal/seals", json=body, headers=headers).json()
    if out:
        write_output(out, base64.b64decode(r["seal"]))
    err_console.print(f"seal {r['es_id']} made for {', '.join(stampers)}")
    typer.echo(r["es_id"])


@app.command("stamp")
def stamp_command(
    document: Annotated[str, typer.Argument(help="PDF or OFD document to stamp.")],
    server: ServerOpt,
    token: TokenOpt,
    session: SessionOpt,
    es_id: Annotated[str, typer.Option("--seal", help="Seal id (esID).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Stamped PDF.")],
    pin: PinOpt = None,
    container: ContainerOpt = "seal",
    keyword: Annotated[
        str | None, typer.Option("--keyword", help="Put the seal on this text.")
    ] = None,
    page: Annotated[int | None, typer.Option("--page", min=1, help="Page (default last).")] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="PDF: lower-left corner 'X,Y' in points; OFD: top-left in mm."),
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    ca_file: CaOpt = None,
) -> None:
    """Stamp a PDF (a visible seal and an SES_Signature, as an incremental update) or an
    OFD document (GB/T 33190 Signs), co-signed by the token and the seal server."""
    from mstcrypt.apps.seal import ofd, pdf

    position = None
    if at is not None:
        try:
            x, y = (float(v) for v in at.split(","))
        except ValueError:
            fail("--at takes X,Y in points, e.g. 400,80")
        position = (x, y)
    data = read_input(document)
    client, t = _terminal(server, token, pin, session, ca_file)
    with client:
        seal = t.seal(es_id)
        key_id = t.key_id(container)
        cert = t.token.get_certificate(container, "sign")
        if cert is None:
            fail(f"container {container!r} has no stamper certificate (run `mstcrypt seal keygen`)")

        def sign(tbs: bytes) -> bytes:
            return t.sign(container, tbs, key_id=key_id)

        if ofd.is_ofd(data):
            if keyword is not None:
                fail("--keyword is for PDF documents; give --page and --at (mm) for OFD")
            stamped = ofd.stamp_ofd(
                data,
                seal=seal,
                signer_cert=cert,
                sign=sign,
                page=-1 if page is None else page - 1,
                position=position or (140.0, 230.0),
            )
        else:
            stamped = pdf.stamp_pdf(
                data,
                seal=seal,
                signer_cert=cert,
                sign=sign,
                page=None if page is None else page - 1,
                position=position,
                keyword=keyword,
                reason=reason,
            )
    write_output(out, stamped)
    console.print(f"stamped with seal {escape(seal.info.name)} ({es_id}) -> {out}")


@app.command("verify")
def verify_command(
    document: Annotated[str, typer.Argument(help="Stamped PDF or OFD document.")],
    ca_file: Annotated[str, typer.Option("--ca-file", help="Trusted root CA (PEM).")],
    chain: Annotated[
        list[str] | None, typer.Option("--chain", help="Intermediate CA certificates (PEM).")
    ] = None,
    crl: Annotated[list[str] | None, typer.Option("--crl", help="CRL files (DER or PEM).")] = None,
    server: Annotated[
        str | None,
        typer.Option("--server", help="Fetch the intermediates and CRLs from this platform."),
    ] = None,
    no_revocation: Annotated[
        bool, typer.Option("--no-revocation", help="Do not require CRLs (offline).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
    tolerant: Annotated[
        bool, typer.Option("--tolerant", help="Accept vendor r||s seal signatures.")
    ] = False,
) -> None:
    """Verify every seal on a PDF or OFD document: signatures, seal, certificates and
    CRLs, document digest (PDF byte range, OFD references), and changes after stamping.
    Exit 1 if any check fails."""
    from mstcrypt.apps.seal import ofd, pdf
    from mstcrypt.apps.seal.verify import Trust
    from mstcrypt.pki import CRL

    anchors = _pem_certs(ca_file)
    intermediates: list[Certificate] = []
    crls: list[Any] = []
    for path in chain or []:
        intermediates.extend(_pem_certs(path))
    for path in crl or []:
        raw = read_input(path)
        crls.append(CRL.from_pem(raw) if raw.lstrip().startswith(b"-----") else CRL.from_der(raw))
    if server:
        with _client(server, ca_file) as c:
            intermediates.extend(c.chain()[:-1])
            crls.extend(c.revocation_lists())
    trust = Trust(anchors, intermediates, crls, require_revocation_check=not no_revocation)
    data = read_input(document)
    if ofd.is_ofd(data):
        report: Any = ofd.verify_ofd(data, trust, tolerant=tolerant)
    else:
        report = pdf.verify_pdf(data, trust, tolerant=tolerant)
    if as_json:
        typer.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2, default=str))
    else:
        _print_report(document, report)
    if not report.ok:
        raise typer.Exit(EXIT_INVALID)


def _print_report(document: str, report: Any) -> None:
    name = escape(os.path.basename(document))
    verdict = "[green]VALID[/green]" if report.ok else "[red]NOT VALID[/red]"
    console.print(f"{name}: {verdict} — {len(report.seals)} seal(s)")
    for problem in report.problems:
        console.print(f"  [red]✗[/red] {escape(problem)}")
    for s in report.seals:
        head = "[green]valid[/green]" if s.ok else "[red]NOT valid[/red]"
        console.print(
            f"  seal {escape(s.location)}: {head} — {escape(s.seal_name or '?')} "
            f"({escape(s.es_id or '?')}), stamped by {escape(s.stamper or '?')}"
            + (f" at {s.signed_at:%Y-%m-%d %H:%M:%S}Z" if s.signed_at else "")
        )
        for c in s.checks:
            mark = "[green]✓[/green]" if c.ok else "[red]✗[/red]"
            console.print(f"    {mark} {c.code}: {escape(c.message)}")
    if getattr(report, "revisions_after_last_seal", False):
        console.print("  note: the file was updated after the last seal (see changes_after)")


@app.command("inspect")
def inspect_command(
    file: Annotated[str, typer.Argument(help="DER SESeal or SES_Signature.")],
) -> None:
    """Print the fields of a GB/T 38540 seal or seal signature."""
    from mstcrypt.formats import ses

    data = read_input(file)
    try:
        seal = ses.parse_seal(data)
        sig = None
    except MstCryptError:
        sig = ses.parse_signature(data)
        seal = sig.seal
    i = seal.info
    console.print(f"seal {escape(i.es_id)} v{seal.version}: {escape(i.name)} (type {i.seal_type})")
    console.print(f"  valid {i.valid_start:%Y-%m-%d %H:%M} .. {i.valid_end:%Y-%m-%d %H:%M} UTC")
    console.print(f"  picture {i.picture_type} {len(i.picture)} bytes, {i.width}x{i.height} mm")
    console.print(f"  stampers: {len(i.certs) or len(i.cert_digests)} ({i.cert_list_type.name})")
    console.print(f"  maker: {escape(Certificate.from_der(seal.maker_cert).subject_str)}")
    if sig is not None:
        signer = Certificate.from_der(sig.signer_cert).subject_str
        console.print(f"signature v{sig.version} by {escape(signer)}")
        console.print(f"  time {sig.time_info}, dataHash {sig.data_hash.hex()}")
        console.print(f"  propertyInfo {escape(sig.property_info)}")


@app.command("sample-pdf")
def sample_pdf_command(
    out: Annotated[str, typer.Argument(help="Where to write the PDF.")],
    lines: Annotated[
        list[str] | None, typer.Option("--line", help="A line of text (repeat).")
    ] = None,
) -> None:
    """Write a small one-page contract PDF to try stamping on."""
    from mstcrypt.apps.seal.pdf import sample_pdf

    text = lines or [
        "Contract No. 2026-001",
        "Party A: Example Unit",
        "Party B: Example Supplier",
        "The parties agree to the terms below.",
        "",
        "Seal of Party A:",
    ]
    write_output(out, sample_pdf(text))
