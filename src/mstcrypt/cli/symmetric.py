"""``mstcrypt sm3`` and ``mstcrypt sm4 encrypt|decrypt``."""

from __future__ import annotations

from typing import Annotated

import typer

from mstcrypt.cli._common import fail, hex_arg, read_input, write_output
from mstcrypt.crypto import sm3 as _sm3
from mstcrypt.crypto import sm4 as _sm4

sm4_app = typer.Typer(help="SM4 encryption (CBC with PKCS#7, CTR, GCM).", no_args_is_help=True)

ModeOpt = Annotated[str, typer.Option("--mode", help="cbc (PKCS#7), ctr or gcm.")]
KeyOpt = Annotated[str, typer.Option("--key", help="16-byte key, hex.")]
IvOpt = Annotated[str, typer.Option("--iv", help="IV: 16 bytes (cbc/ctr) or 12 bytes (gcm), hex.")]
AadOpt = Annotated[str | None, typer.Option("--aad", help="GCM associated data, hex.")]
InOpt = Annotated[str, typer.Option("--in", help="Input file ('-' for standard input).")]
OutOpt = Annotated[str | None, typer.Option("--out", help="Output file (default stdout).")]


def sm3_command(
    infile: InOpt = "-",
    hmac_key: Annotated[str | None, typer.Option("--hmac-key", help="HMAC-SM3 key, hex.")] = None,
) -> None:
    """SM3 digest (or HMAC-SM3 with --hmac-key) of a file, printed in hex."""
    data = read_input(infile)
    key = hex_arg(hmac_key, "--hmac-key")
    digest = _sm3.hmac_sm3(key, data) if key is not None else _sm3.sm3(data)
    typer.echo(digest.hex())


def _params(mode: str, key: str, iv: str, aad: str | None) -> tuple[bytes, bytes, bytes]:
    if mode not in ("cbc", "ctr", "gcm"):
        fail(f"unknown --mode {mode!r}; expected cbc, ctr or gcm")
    if aad is not None and mode != "gcm":
        fail("--aad is only meaningful with --mode gcm")
    k = hex_arg(key, "--key", 16)
    v = hex_arg(iv, "--iv", 12 if mode == "gcm" else 16)
    a = hex_arg(aad, "--aad") or b""
    assert k is not None and v is not None
    return k, v, a


def _run(
    mode: str, key: str, iv: str, aad: str | None, infile: str, out: str | None, encrypt: bool
) -> None:
    k, v, a = _params(mode, key, iv, aad)
    data = read_input(infile)
    if mode == "cbc":
        result = _sm4.cbc_encrypt(k, v, data) if encrypt else _sm4.cbc_decrypt(k, v, data)
    elif mode == "ctr":
        result = _sm4.ctr(k, v, data)
    else:
        result = _sm4.gcm_encrypt(k, v, data, a) if encrypt else _sm4.gcm_decrypt(k, v, data, a)
    write_output(out, result)


@sm4_app.command("encrypt")
def encrypt(
    mode: ModeOpt,
    key: KeyOpt,
    iv: IvOpt,
    aad: AadOpt = None,
    infile: InOpt = "-",
    out: OutOpt = None,
) -> None:
    """Encrypt. GCM output is ciphertext ‖ 16-byte tag."""
    _run(mode, key, iv, aad, infile, out, encrypt=True)


@sm4_app.command("decrypt")
def decrypt(
    mode: ModeOpt,
    key: KeyOpt,
    iv: IvOpt,
    aad: AadOpt = None,
    infile: InOpt = "-",
    out: OutOpt = None,
) -> None:
    """Decrypt. GCM input is ciphertext ‖ tag; a wrong tag or padding exits with 2."""
    _run(mode, key, iv, aad, infile, out, encrypt=False)
