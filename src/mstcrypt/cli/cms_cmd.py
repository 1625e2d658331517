"""``mstcrypt cms sign|verify|encrypt|decrypt``: GM/T 0010 CMS files, with the option
names of ``gmssl cmssign/cmsverify/cmsencrypt/cmsdecrypt`` (``-key -pass -cert -in -out
-rcptcert``; the ``--`` spellings work too).

Messages are written as PEM ``CMS`` (GmSSL's form) unless ``--outform der``; either is
read. ``--compat gmssl`` writes what GmSSL 3.x reads (its signature form and key
encryption OID) and accepts GmSSL's signature form when verifying. ``--profile pkcs7``
writes the RFC 5652 content-type OIDs that OpenSSL/Tongsuo ``cms`` read.
``verify --cacert ROOT`` also validates the signer certificate up to ROOT (with
``--crl`` files); without it only the signature is checked, and the output says so.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mstcrypt.cli._common import EXIT_INVALID, console, fail, read_input, write_output
from mstcrypt.errors import VerificationError
from mstcrypt.formats import cms

app = typer.Typer(
    help="GM/T 0010 CMS: SM2 SignedData and SM2/SM4 EnvelopedData (gmssl cms* options).",
    no_args_is_help=True,
)

KeyOpt = Annotated[str, typer.Option("--key", "-key", help="Private key (PEM/DER PKCS#8).")]
PassOpt = Annotated[
    str | None,
    typer.Option("--pass", "-pass", envvar="MSTCRYPT_KEY_PASS", help="Password of the key."),
]
CertOpt = Annotated[str, typer.Option("--cert", "-cert", help="Certificate (PEM/DER).")]
InOpt = Annotated[str, typer.Option("--in", "-in", help="Input file ('-' for standard input).")]
OutOpt = Annotated[
    str | None, typer.Option("--out", "-out", help="Output file (standard output if absent).")
]
OutformOpt = Annotated[str, typer.Option("--outform", "-outform", help="pem (default) or der.")]
ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile", help="gmt0010 (1.2.156.10197.6.1.4.2.x, default) or pkcs7 (RFC 5652 OIDs)."
    ),
]
CompatOpt = Annotated[
    str | None,
    typer.Option("--compat", help="gmssl: the forms GmSSL 3.x writes and reads."),
]


def _cert(path: str) -> bytes:
    from mstcrypt.pki import Certificate

    return Certificate.load(read_input(path)).der


def _key(path: str, password: str | None):  # type: ignore[no-untyped-def]
    from mstcrypt.formats.keys import load_private_key

    return load_private_key(read_input(path), password)


def _compat(value: str | None) -> cms.SignatureForm:
    if value is None:
        return cms.SignatureForm.STANDARD
    if value != "gmssl":
        fail(f"unknown --compat {value!r}; expected gmssl")
    return cms.SignatureForm.GMSSL


def _profile(value: str) -> cms.Profile:
    try:
        return cms.Profile(value)
    except ValueError:
        fail(f"unknown --profile {value!r}; expected gmt0010 or pkcs7")


def _write(out: str | None, der: bytes, outform: str) -> None:
    if outform not in ("pem", "der"):
        fail(f"unknown --outform {outform!r}; expected pem or der")
    write_output(out, cms.pem(der) if outform == "pem" else der)


@app.command("sign")
def sign(
    key: KeyOpt,
    cert: CertOpt,
    infile: InOpt = "-",
    out: OutOpt = None,
    password: PassOpt = None,
    detached: Annotated[
        bool, typer.Option("--detached", help="Leave the content out of the message.")
    ] = False,
    certfile: Annotated[
        list[str] | None,
        typer.Option("--certfile", help="Extra certificates to include (e.g. sub-CA)."),
    ] = None,
    profile: ProfileOpt = "gmt0010",
    compat: CompatOpt = None,
    outform: OutformOpt = "pem",
) -> None:
    """Sign a file (SignedData: SM3, SM2 with Z over contentType, messageDigest,
    signingTime; the signer certificate included)."""
    der = cms.sign(
        read_input(infile),
        _cert(cert),
        _key(key, password),
        detached=detached,
        profile=_profile(profile),
        form=_compat(compat),
        extra_certs=[_cert(c) for c in certfile or ()],
    )
    _write(out, der, outform)


@app.command("verify")
def verify(
    infile: InOpt = "-",
    out: OutOpt = None,
    content: Annotated[
        str | None,
        typer.Option("--content", "-content", help="The content of a detached signature."),
    ] = None,
    cacert: Annotated[
        str | None,
        typer.Option("--cacert", "-CAfile", help="Root CA: validate the signer certificate."),
    ] = None,
    crl: Annotated[
        list[str] | None, typer.Option("--crl", help="CRL files (PEM/DER) for --cacert.")
    ] = None,
    compat: CompatOpt = None,
) -> None:
    """Verify a SignedData; write the attached content to --out. Exit 0 valid, 1 invalid,
    2 usage or format error."""
    sd = cms.SignedData.from_der(read_input(infile))
    forms = [cms.SignatureForm.STANDARD]
    if _compat(compat) is cms.SignatureForm.GMSSL:
        forms.append(cms.SignatureForm.GMSSL)
    body = read_input(content) if content is not None else None
    if sd.detached and body is None:
        fail("detached signature: pass the signed file with --content")
    if not sd.detached and body is not None:
        fail("the signature is attached; --content is not used")
    try:
        signers = sd.verify(body, forms=forms)
        chains = [_validate(s.certificate_der, cacert, crl or []) for s in signers]
    except VerificationError as exc:
        console.print(f"Verification failure: {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None
    for s, chain in zip(signers, chains, strict=True):
        from mstcrypt.pki import Certificate

        subject = Certificate.from_der(s.certificate_der).subject_str
        when = s.signing_time.isoformat() if s.signing_time else "no signing time"
        console.print(f"signer: {subject} ({when}, {s.form.value} form); {chain}", soft_wrap=True)
    if sd.content is not None and out is not None:
        write_output(out, sd.content)
    console.print("Verification successful")


def _validate(cert_der: bytes, cacert: str | None, crls: list[str]) -> str:
    if cacert is None:
        return "certificate NOT validated (no --cacert)"
    from mstcrypt.pki import CRL, Certificate, load_certificates, validate_path

    anchors = load_certificates(read_input(cacert))
    leaf = Certificate.from_der(cert_der)
    crl_objs = []
    for f in crls:
        data = read_input(f)
        crl_objs.append(CRL.from_pem(data) if data.lstrip()[:5] == b"-----" else CRL.from_der(data))
    validate_path(
        leaf,
        anchors=anchors,
        crls=crl_objs,
        require_revocation_check=bool(crl_objs),
        key_usage={"digital_signature"},
    )
    status = "checked against the CRL" if crl_objs else "revocation NOT checked (no --crl)"
    return f"chain to {anchors[0].subject_str} valid, {status}"


@app.command("encrypt")
def encrypt(
    rcptcert: Annotated[
        list[str], typer.Option("--rcptcert", "-rcptcert", help="Recipient certificate (repeat).")
    ],
    infile: InOpt = "-",
    out: OutOpt = None,
    profile: ProfileOpt = "gmt0010",
    compat: CompatOpt = None,
    outform: OutformOpt = "pem",
) -> None:
    """Envelope a file for each recipient (SM2-encrypted SM4 key, SM4-CBC content)."""
    der = cms.encrypt(
        read_input(infile),
        [_cert(c) for c in rcptcert],
        profile=_profile(profile),
        form=_compat(compat),
    )
    _write(out, der, outform)


@app.command("decrypt")
def decrypt(
    key: KeyOpt,
    cert: CertOpt,
    infile: InOpt = "-",
    out: OutOpt = None,
    password: PassOpt = None,
) -> None:
    """Open an EnvelopedData with the recipient's key and certificate."""
    ed = cms.EnvelopedData.from_der(read_input(infile))
    write_output(out, ed.decrypt(_cert(cert), _key(key, password)))
