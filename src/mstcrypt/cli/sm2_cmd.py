"""``mstcrypt sm2 ...``: keygen, sign, verify, encrypt, decrypt (gmssl/openssl style)."""

from __future__ import annotations

from typing import Annotated

import typer

from mstcrypt.cli._common import EXIT_INVALID, console, fail, read_input, write_output, write_secret
from mstcrypt.crypto.sm2 import DEFAULT_ID, SM2PrivateKey
from mstcrypt.errors import DecodeError, VerificationError
from mstcrypt.formats import gmt0009
from mstcrypt.formats.keys import (
    dump_private_key,
    dump_public_key,
    load_private_key,
    load_public_key,
)

app = typer.Typer(
    help="SM2 keys, signatures (with signer ID) and encryption.", no_args_is_help=True
)

_DEFAULT_ID = DEFAULT_ID.decode()
FORMATS = ("der", "c1c3c2", "c1c2c3", "c1c3c2-no04", "c1c2c3-no04")

PassOpt = Annotated[str | None, typer.Option("--pass", help="Password of the PEM PKCS#8 key.")]
IdOpt = Annotated[str, typer.Option("--id", help="Signer ID (default 1234567812345678).")]
InOpt = Annotated[str, typer.Option("--in", help="Input file ('-' for standard input).")]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="Ciphertext format: der (GM/T 0009), c1c3c2, c1c2c3, "
        "or c1c3c2-no04 / c1c2c3-no04 (without the 04 byte).",
    ),
]


def _load_key(path: str, password: str | None) -> SM2PrivateKey:
    return load_private_key(read_input(path), password)


def _check_format(fmt: str) -> tuple[str, bool]:
    if fmt not in FORMATS:
        fail(f"unknown --format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "der":
        return "der", True
    order, _, no04 = fmt.partition("-")
    return order, not no04


@app.command("keygen")
def keygen(
    out: Annotated[str, typer.Option("--out", help="Private key file (PEM PKCS#8).")],
    pubout: Annotated[str | None, typer.Option("--pubout", help="Public key file (PEM).")] = None,
    password: PassOpt = None,
    scheme: Annotated[
        str,
        typer.Option(
            "--pass-scheme",
            help="gmssl (PBKDF2-HMAC-SM3 + SM4-CBC) or openssl (PBKDF2-HMAC-SHA256 + AES-256-CBC).",
        ),
    ] = "gmssl",
) -> None:
    """Generate an SM2 key pair."""
    key = SM2PrivateKey.generate()
    write_secret(out, dump_private_key(key, password=password, scheme=scheme))
    if pubout:
        write_output(pubout, dump_public_key(key.public_key()))


@app.command("pubout")
def pubout(
    key: Annotated[str, typer.Option("--key")],
    password: PassOpt = None,
    out: Annotated[str | None, typer.Option("--out")] = None,
) -> None:
    """Write the public key of a private key (PEM)."""
    write_output(out, dump_public_key(_load_key(key, password).public_key()))


@app.command("sign")
def sign(
    key: Annotated[str, typer.Option("--key", help="Private key (PEM/DER PKCS#8).")],
    infile: InOpt = "-",
    out: Annotated[str | None, typer.Option("--out", help="Signature file (DER).")] = None,
    password: PassOpt = None,
    signer_id: IdOpt = _DEFAULT_ID,
    raw: Annotated[
        bool, typer.Option("--raw", help="Write r‖s (64 bytes) instead of DER.")
    ] = False,
) -> None:
    """Sign a file: e = SM3(Z ‖ M), DER SM2Signature (GM/T 0009)."""
    k = _load_key(key, password)
    sig = k.sign(read_input(infile), signer_id=signer_id.encode(), encoding="raw" if raw else "der")
    write_output(out, sig)


@app.command("verify")
def verify(
    pubkey: Annotated[str, typer.Option("--pubkey", help="Public key (PEM/DER SPKI).")],
    sig: Annotated[str, typer.Option("--sig", help="Signature file (DER, or r‖s with --raw).")],
    infile: InOpt = "-",
    signer_id: IdOpt = _DEFAULT_ID,
    raw: Annotated[bool, typer.Option("--raw", help="The signature is r‖s (64 bytes).")] = False,
) -> None:
    """Verify a signature. Exit 0 valid, 1 invalid, 2 usage or format error."""
    pub = load_public_key(read_input(pubkey))
    signature = read_input(sig)
    message = read_input(infile)
    try:
        pub.verify(
            signature, message, signer_id=signer_id.encode(), encoding="raw" if raw else "der"
        )
    except DecodeError as exc:
        fail(f"signature is malformed: {exc}")
    except VerificationError:
        console.print("Verification failure")
        raise typer.Exit(EXIT_INVALID) from None
    console.print("Verified OK")


@app.command("encrypt")
def encrypt(
    pubkey: Annotated[str, typer.Option("--pubkey", help="Recipient public key (PEM/DER).")],
    infile: InOpt = "-",
    out: Annotated[str | None, typer.Option("--out")] = None,
    fmt: FormatOpt = "der",
) -> None:
    """SM2-encrypt a file to a public key."""
    order, with04 = _check_format(fmt)
    ct = load_public_key(read_input(pubkey)).encrypt(read_input(infile))
    if order != "der":
        ct = gmt0009.cipher_to_raw(ct, order, with_04=with04)
    write_output(out, ct)


@app.command("decrypt")
def decrypt(
    key: Annotated[str, typer.Option("--key", help="Private key (PEM/DER PKCS#8).")],
    infile: InOpt = "-",
    out: Annotated[str | None, typer.Option("--out")] = None,
    password: PassOpt = None,
    fmt: FormatOpt = "der",
) -> None:
    """Decrypt an SM2 ciphertext (C3 is always checked)."""
    order, with04 = _check_format(fmt)
    k = _load_key(key, password)
    ct = read_input(infile)
    if order != "der":
        ct = gmt0009.cipher_from_raw(ct, order, with_04=with04)
    write_output(out, k.decrypt(ct))
