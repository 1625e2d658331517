"""Shared CLI plumbing: file I/O with '-' for stdin/stdout, hex parsing, error mapping."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from mstcrypt.errors import MstCryptError, VerificationError

err_console = Console(stderr=True, highlight=False)
console = Console(highlight=False)

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


# -- options shared by the commands that log a soft token in (§7.3) ---------------------
PlatformOpt = Annotated[str, typer.Option("--server", help="Platform URL.")]
TokenFileOpt = Annotated[str, typer.Option("--token", help="Soft token file.")]
TokenPinOpt = Annotated[str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN")]
ContainerOpt = Annotated[str, typer.Option("--container")]
LoginNameOpt = Annotated[
    str,
    typer.Option("--server-name", help="Expected login server name (bound into the signatures)."),
]
RootFileOpt = Annotated[str | None, typer.Option("--ca-file", help="Pinned root CA (PEM).")]


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")


def write_output(path: str | None, data: bytes) -> None:
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")


def write_secret(path: str, data: bytes) -> None:
    """Write a private key file readable only by the owner."""
    import os

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")


def open_token(path: str, pin: str | None) -> Any:
    """Open the soft token at ``path`` and log in with ``pin``, prompting for it (hidden)
    when not given."""
    from mstcrypt.module import SoftToken

    tok = SoftToken.open(path)
    tok.login(pin if pin is not None else str(typer.prompt("PIN", hide_input=True)))
    return tok


def hex_arg(value: str | None, what: str, size: int | None = None) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        fail(f"{what} must be hexadecimal")
    if size is not None and len(raw) != size:
        fail(f"{what} must be {size} bytes ({2 * size} hex characters), got {len(raw)}")
    return raw


def run(app: Any) -> int:
    """Run the typer app in standalone mode (usage errors exit 2 with click's message);
    map our typed errors to exit codes without tracebacks."""
    try:
        app()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    except VerificationError as exc:
        err_console.print(f"[red]verification failed:[/red] {exc}", markup=True)
        return EXIT_INVALID
    except MstCryptError as exc:
        err_console.print(f"[red]error:[/red] {exc}", markup=True)
        return EXIT_USAGE
    return EXIT_OK
