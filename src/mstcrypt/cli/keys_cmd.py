"""``mstcrypt keys``: encryption-key rotation picked up by the terminal.

* ``mstcrypt keys collect`` (the terminal): log in with the soft token (§7.3), fetch the
  encryption keys an operator rotated for it, validate each new certificate to the
  token's root, install the key (the old one stays, decrypt-only) and acknowledge.
* ``mstcrypt keys rotate`` (a registration officer, with a session token): rotate an
  owner's encryption key; the new key waits for the terminal's ``keys collect``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mstcrypt.cli._common import (
    ContainerOpt,
    LoginNameOpt,
    PlatformOpt,
    RootFileOpt,
    TokenFileOpt,
    TokenPinOpt,
    console,
    open_token,
)

app = typer.Typer(
    help="Encryption-key rotation and its pickup by the terminal.", no_args_is_help=True
)


@app.command("collect")
def collect_command(
    server: PlatformOpt,
    token: TokenFileOpt,
    pin: TokenPinOpt = None,
    container: ContainerOpt = "main",
    server_name: LoginNameOpt = "mstcrypt-login",
    ca_file: RootFileOpt = None,
) -> None:
    """Collect the encryption keys an operator rotated for this terminal: each new
    certificate is validated to the root (the token's, or --ca-file), the key is
    unwrapped with the signing key inside the token and installed; the previous key
    moves to a decrypt-only container, so older files keep opening."""
    from mstcrypt.cli.platform import _anchors
    from mstcrypt.client import Client

    tok = open_token(token, pin)
    anchors = _anchors(ca_file, tok)
    with Client(server, anchors=anchors) as c:
        session = c.login(tok, container=container, server_name=server_name)["session_token"]
        try:
            done = c.collect_keys(session, tok, container=container)
        finally:
            c.logout(session)
    if not done:
        console.print("nothing pending: no rotated key waits for this terminal")
        return
    for d in done:
        kept = (
            f"; the previous key is kept in {d.previous_container!r}"
            if d.previous_container
            else ""
        )
        what = "installed" if d.installed else "already installed, acknowledged"
        console.print(
            f"key {d.key_id} v{d.version} {what} in {d.container!r} "
            f"(certificate {d.certificate.serial:x}){kept}"
        )


@app.command("rotate")
def rotate_command(
    server: Annotated[str, typer.Option("--server", help="Platform URL.")],
    session: Annotated[
        str,
        typer.Option(
            "--session",
            help="File holding a registration officer's session token (`mstcrypt login --out`).",
        ),
    ],
    owner: Annotated[str, typer.Option("--owner", help="Whose encryption key to rotate.")],
    ca_file: Annotated[
        str | None,
        typer.Option("--ca-file", help="Root CA (PEM) the platform's certificate must chain to."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Soft token whose preset root to use instead of --ca-file."),
    ] = None,
    pin: Annotated[str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN")] = None,
) -> None:
    """Rotate OWNER's encryption key (registration officer): the new key, with a
    certificate of the current one's subject, is sealed to the terminal's signing key and
    waits until the terminal runs `mstcrypt keys collect`."""
    from mstcrypt.cli.platform import officer_client

    with officer_client(server, session, ca_file, token, pin) as c:
        r = c.rotate_key(owner)
    console.print(f"rotated {owner}'s encryption key: {r['key_id']} awaits pickup by the terminal")
