"""``mstcrypt token ...``: the MST-CC soft token (init, info, change-pin, unlock, keygen)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mstcrypt.cli._common import console, write_output
from mstcrypt.formats.keys import dump_public_key
from mstcrypt.module import KeyUsage, SoftToken

app = typer.Typer(help="The terminal's soft token (MST-CC).", no_args_is_help=True)

TokenOpt = Annotated[str, typer.Option("--token", help="Path of the token file.")]


def _pin(value: str | None, prompt: str, confirm: bool = False) -> str:
    if value is not None:
        return value
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


@app.command("init")
def init(
    token: TokenOpt,
    pin: Annotated[
        str | None,
        typer.Option("--pin", envvar="MSTCRYPT_PIN", help="User PIN (prompted if absent)."),
    ] = None,
    admin_code: Annotated[
        str | None,
        typer.Option(
            "--admin-code",
            envvar="MSTCRYPT_ADMIN_CODE",
            help="Administrator unlock code (prompted if absent).",
        ),
    ] = None,
    label: Annotated[str, typer.Option("--label")] = "mstcrypt",
    max_retries: Annotated[int, typer.Option("--max-retries")] = 6,
    iterations: Annotated[
        int, typer.Option("--iterations", help="PBKDF2-HMAC-SM3 iterations (>= 100000).")
    ] = 200_000,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing token.")] = False,
) -> None:
    """Create an empty token protected by a PIN, with an administrator unlock code."""
    p = _pin(pin, "New PIN", confirm=True)
    a = _pin(admin_code, "Administrator unlock code", confirm=True)
    tok = SoftToken.init(
        token, p, a, label=label, max_retries=max_retries, iterations=iterations, overwrite=force
    )
    info = tok.info()
    console.print(f"token {info.serial} created at {info.path}")


@app.command("info")
def info(
    token: TokenOpt,
    pin: Annotated[
        str | None,
        typer.Option(
            "--pin", envvar="MSTCRYPT_PIN", help="With the PIN, containers are listed too."
        ),
    ] = None,
) -> None:
    """Show the token's state (and its containers when the PIN is given)."""
    tok = SoftToken.open(token)
    i = tok.info()
    t = Table(title="soft token", show_header=False)
    for k, v in (
        ("path", i.path),
        ("serial", i.serial),
        ("label", i.label),
        ("created", i.created),
        ("KDF", f"PBKDF2-HMAC-SM3, {i.iterations} iterations"),
        ("wrong PINs", f"{i.pin_failures} of {i.max_retries}"),
        ("state", "LOCKED" if i.locked else "usable"),
    ):
        t.add_row(k, str(v))
    console.print(t)
    if pin is not None:
        tok.login(pin)
        ct = Table(title="containers")
        ct.add_column("container")
        ct.add_column("usage")
        ct.add_column("public key (x)")
        ct.add_column("certificate")
        for name in tok.list_containers():
            for usage in KeyUsage:
                try:
                    pub = tok.export_public_key(name, usage)
                except Exception:  # noqa: S112 - a container may lack a key of this usage
                    continue
                cert = tok.get_certificate(name, usage)
                ct.add_row(
                    name,
                    usage.value,
                    pub.to_bytes()[1:17].hex() + "…",
                    f"{len(cert)} bytes" if cert else "-",
                )
        console.print(ct)


@app.command("change-pin")
def change_pin(
    token: TokenOpt,
    old_pin: Annotated[str | None, typer.Option("--old-pin")] = None,
    new_pin: Annotated[str | None, typer.Option("--new-pin")] = None,
) -> None:
    """Change the PIN (atomic re-wrap: a crash leaves the old or the new PIN valid)."""
    tok = SoftToken.open(token)
    tok.change_pin(_pin(old_pin, "Current PIN"), _pin(new_pin, "New PIN", confirm=True))
    console.print("PIN changed")


@app.command("unlock")
def unlock(
    token: TokenOpt,
    admin_code: Annotated[str | None, typer.Option("--admin-code")] = None,
    new_pin: Annotated[str | None, typer.Option("--new-pin")] = None,
) -> None:
    """Unlock a token with the administrator code and set a new PIN."""
    tok = SoftToken.open(token)
    tok.unlock(_pin(admin_code, "Administrator unlock code"), _pin(new_pin, "New PIN", True))
    console.print("token unlocked, PIN reset")


@app.command("keygen")
def keygen(
    token: TokenOpt,
    container: Annotated[str, typer.Option("--container")],
    pin: Annotated[str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN")] = None,
    usage: Annotated[str, typer.Option("--usage", help="sign or enc")] = "sign",
    pubout: Annotated[str | None, typer.Option("--pubout")] = None,
) -> None:
    """Generate a key pair inside the token (creating the container if needed)."""
    tok = SoftToken.open(token)
    tok.login(_pin(pin, "PIN"))
    if container not in tok.list_containers():
        tok.create_container(container)
    h = tok.generate_key_pair(container, KeyUsage(usage))
    write_output(pubout, dump_public_key(h.public_key))
