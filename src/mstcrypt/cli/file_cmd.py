"""``mstcrypt file encrypt|decrypt|inspect|rewrap``: file encryption (T/ZSA 37-2020 §7.6,
format in ``docs/file-format.md``).

Recipients come from encryption-certificate PEM files (``--recipient-cert``), raw SM2
public keys (``--recipient-key``) or the KMC directory (``--to OWNER --server URL``,
validated with the CRLs against ``--anchor``: a root PEM, or a token with a preset root;
never the server's own root), and ``--escrow`` adds a stanza for the KMC's key-escrow
certificate, validated the same way. Decryption uses the
soft token (``--token --pin [--container]``). Files are written atomically; a format
or authentication error exits with code 2 and the error's code and message.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO, NoReturn

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from mstcrypt.apps import files
from mstcrypt.cli._common import EXIT_USAGE, console, err_console, open_token
from mstcrypt.cli._common import fail as _fail
from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import MstCryptError
from mstcrypt.formats.keys import load_public_key
from mstcrypt.module import KeyUsage, SoftToken
from mstcrypt.pki import Certificate, load_certificates

app = typer.Typer(
    help="Encrypt files to SM2 encryption keys (T/ZSA 37-2020 §7.6).", no_args_is_help=True
)

SUFFIX = ".mst"
PROGRESS_THRESHOLD = 16 << 20

OutOpt = Annotated[
    str | None, typer.Option("--out", "-o", help="Output file ('-' for standard output).")
]
TokenOpt = Annotated[str, typer.Option("--token", help="Path of the soft token file.")]
PinOpt = Annotated[
    str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN", help="PIN (prompted if absent).")
]
ContainerOpt = Annotated[
    str | None,
    typer.Option("--container", help="Token container (default: every container is tried)."),
]
ServerOpt = Annotated[
    str | None, typer.Option("--server", envvar="MSTCRYPT_SERVER", help="Platform URL.")
]
AnchorOpt = Annotated[
    str | None,
    typer.Option(
        "--anchor",
        help="Root CA (a PEM certificate, or a soft token with a preset root) that the "
        "directory and escrow certificates must validate to.",
    ),
]
ProgressOpt = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Progress bar (default: large files on a TTY)."),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]


# --- plumbing ------------------------------------------------------------------------------


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Exit with ``message`` shown literally (file names and error codes may hold '[')."""
    _fail(escape(message), code)


@contextlib.contextmanager
def _file_errors(what: str) -> Iterator[None]:
    """Any file-format or authentication error: exit 2 with its code and message."""
    try:
        yield
    except files.FileError as exc:
        fail(f"{what}: {exc} [{exc.code}]", EXIT_USAGE)
    except OSError as exc:
        fail(f"{what}: {exc.strerror or exc}", EXIT_USAGE)


def _client(server: str, anchors: list[Certificate]) -> Any:
    """The platform client (a seam for tests)."""
    from mstcrypt.client import Client

    return Client(server, anchors=anchors)


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")


def _certificates(paths: list[str]) -> list[Certificate]:
    out: list[Certificate] = []
    for p in paths:
        certs = load_certificates(_read_bytes(p))
        if not certs:
            fail(f"{p}: no certificate found")
        out.extend(certs[:1])
    return out


def _anchors(anchor: str | None, token: str | None = None) -> list[Certificate]:
    """Trust anchors: --anchor (PEM certificates, or a soft token's preset roots), else
    the roots preset in ``token``. Never the server's own root."""
    from mstcrypt.client import token_anchors

    for source in (anchor, token):
        if source is None:
            continue
        data = _read_bytes(source)
        certs = load_certificates(data) if b"-----BEGIN" in data else []
        if not certs:
            try:
                certs = token_anchors(SoftToken.open(source))
            except MstCryptError:
                fail(f"{source}: neither a PEM certificate nor a soft token")
        if certs:
            return certs
    fail(
        "no trust anchor: pass --anchor ROOT.pem (or a token initialised with "
        "`mstcrypt token init --anchor`)"
    )


def _directory_recipients(owners: list[str], server: str | None, anchors: Any) -> list[Any]:
    if not owners:
        return []
    if server is None:
        fail("--to needs --server (the platform's URL)")
    roots = anchors()
    client = _client(server, roots)
    return list(client.recipient_certificates(owners, anchors=roots))


def _escrow(
    escrow_key: str | None, escrow: bool, server: str | None, anchors: Any
) -> SM2PublicKey | None:
    if escrow_key is not None and escrow:
        fail("use either --escrow-key or --escrow, not both")
    if escrow_key is not None:
        return load_public_key(_read_bytes(escrow_key))
    if not escrow:
        return None
    if server is None:
        fail("--escrow needs --server (the KMC publishes its certified escrow key)")
    roots = anchors()
    return _client(server, roots).escrow_certificate(anchors=roots).public_key


def _recipients(
    certs: list[str], keys: list[str], owners: list[str], server: str | None, anchors: Any
) -> list[Any]:
    out: list[Any] = [*_certificates(certs)]
    out += [load_public_key(_read_bytes(k)) for k in keys]
    out += _directory_recipients(owners, server, anchors)
    return out


def _token(path: str, pin: str | None, container: str | None) -> tuple[SoftToken, Any]:
    tok = open_token(path, pin)
    handle = tok.key(container, KeyUsage.ENCRYPT) if container is not None else None
    return tok, handle


@contextlib.contextmanager
def _progress(
    enabled: bool | None, total: int | None, label: str
) -> Iterator[Callable[[int], None] | None]:
    if enabled is None:
        enabled = err_console.is_terminal and (total or 0) >= PROGRESS_THRESHOLD
    if not enabled:
        yield None
        return
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _size(path: str) -> int | None:
    if path == "-":
        return None
    with contextlib.suppress(OSError):
        return os.stat(path).st_size
    return None


@contextlib.contextmanager
def _input(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    with f:
        yield f


@contextlib.contextmanager
def _output(path: str, force: bool) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    if Path(path).exists() and not force:
        fail(f"{path} exists; pass --force to overwrite it")
    with files.atomic_output(path) as f:
        yield f


# --- commands -------------------------------------------------------------------------------


@app.command("encrypt")
def encrypt_command(
    input: Annotated[str, typer.Argument(help="File to encrypt ('-' for standard input).")],
    out: OutOpt = None,
    recipient_cert: Annotated[
        list[str] | None,
        typer.Option("--recipient-cert", help="Recipient's encryption certificate (PEM)."),
    ] = None,
    recipient_key: Annotated[
        list[str] | None,
        typer.Option("--recipient-key", help="Recipient's SM2 public key (PEM)."),
    ] = None,
    to: Annotated[
        list[str] | None,
        typer.Option("--to", help="Owner whose encryption certificate the KMC directory has."),
    ] = None,
    server: ServerOpt = None,
    anchor: AnchorOpt = None,
    escrow_key: Annotated[
        str | None, typer.Option("--escrow-key", help="KMC file-recovery public key (PEM).")
    ] = None,
    escrow: Annotated[
        bool, typer.Option("--escrow", help="Add an escrow stanza for --server's KMC.")
    ] = False,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Power of two.")] = (
        files.DEFAULT_CHUNK_SIZE
    ),
    in_place: Annotated[
        bool, typer.Option("--in-place", help="Replace INPUT by its encryption (atomic).")
    ] = False,
    force: ForceOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Encrypt a file to one or more recipients (default output: INPUT.mst)."""
    anchors = functools.cache(lambda: _anchors(anchor))
    recipients = _recipients(recipient_cert or [], recipient_key or [], to or [], server, anchors)
    if not recipients:
        fail("no recipient: use --recipient-cert, --recipient-key or --to")
    escrow_pub = _escrow(escrow_key, escrow, server, anchors)
    opts: dict[str, Any] = {"escrow": escrow_pub, "chunk_size": chunk_size}
    with _file_errors(input), _progress(progress, _size(input), "encrypting") as tick:
        if in_place:
            if input == "-" or out is not None:
                fail("--in-place takes a file and no --out")
            header = files.encrypt_file_in_place(input, recipients, progress=tick, **opts)
            target = input
        else:
            target = out or ("-" if input == "-" else input + SUFFIX)
            with _input(input) as src, _output(target, force) as dst:
                header = files.encrypt(src, dst, recipients, progress=tick, **opts)
    if target != "-":
        err_console.print(
            f"encrypted {input} -> {target} for {len(header.stanzas)} stanza(s)", highlight=False
        )


@app.command("decrypt")
def decrypt_command(
    input: Annotated[str, typer.Argument(help="Encrypted file ('-' for standard input).")],
    token: TokenOpt,
    out: OutOpt = None,
    pin: PinOpt = None,
    container: ContainerOpt = None,
    offset: Annotated[
        int | None, typer.Option("--offset", min=0, help="Decrypt only from this byte.")
    ] = None,
    length: Annotated[
        int | None, typer.Option("--length", min=0, help="Decrypt only this many bytes.")
    ] = None,
    in_place: Annotated[
        bool, typer.Option("--in-place", help="Replace INPUT by its plaintext (atomic).")
    ] = False,
    force: ForceOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Decrypt with the soft token. A file output appears only if every chunk
    authenticated; standard output may receive authenticated chunks before an error."""
    tok, handle = _token(token, pin, container)
    with _file_errors(input):
        if offset is not None or length is not None:
            if input == "-" or in_place:
                fail("--offset/--length need a seekable INPUT file")
            target = out or "-"
            with _input(input) as src, _output(target, force) as dst:
                reader = files.EncryptedFileReader(src, tok, handle)
                for piece in reader.iter_range(offset or 0, length):
                    dst.write(piece)
            return
        with _progress(progress, _size(input), "decrypting") as tick:
            if in_place:
                if input == "-" or out is not None:
                    fail("--in-place takes a file and no --out")
                files.decrypt_file_in_place(input, tok, handle, progress=tick)
                return
            if out is None:
                if input == "-" or not input.endswith(SUFFIX):
                    fail(f"give --out (INPUT does not end in {SUFFIX})")
                out = input[: -len(SUFFIX)]
            with _input(input) as src, _output(out, force) as dst:
                files.decrypt(src, dst, tok, handle, progress=tick)


@app.command("inspect")
def inspect_command(
    input: Annotated[str, typer.Argument(help="Encrypted file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    escrow_out: Annotated[
        str | None,
        typer.Option(
            "--escrow-out",
            help="Write the escrow stanza's ciphertext (base64) for a KMC recovery request.",
        ),
    ] = None,
) -> None:
    """Show the header (no key needed; nothing shown is authenticated)."""
    with _file_errors(input):
        if input == "-":
            info = files.FileInfo(files.inspect(sys.stdin.buffer), None, None)
        else:
            info = files.inspect_file(input)
    desc = info.describe()
    if escrow_out is not None:
        stanza = info.header.escrow
        if stanza is None:
            fail("the file has no escrow stanza")
        Path(escrow_out).write_text(base64.b64encode(stanza.wrapped).decode() + "\n")
    if as_json:
        console.print_json(json.dumps(desc))
        return
    t = Table(title="encrypted file (header not authenticated)", show_header=False)
    for key in ("version", "suite", "chunk_size", "header_size", "chunks", "plaintext_size"):
        if key in desc:
            t.add_row(key, str(desc[key]))
    console.print(t)
    for i, s in enumerate(info.header.stanzas):
        line = f"stanza {i}: {s.kind.name.lower():9} key id {s.key_id.hex()}"
        if s.cert_fingerprint:
            line += f" certificate SM3 {s.cert_fingerprint.hex()}"
        console.print(line, soft_wrap=True, markup=False)


def _released(path: str) -> bytes:
    raw = _read_bytes(path)
    if raw.startswith(b"\x30"):
        return raw  # DER as is: its last byte may well be 0x20, 0x0a... (never strip it)
    try:
        return base64.b64decode(raw.strip(), validate=True)
    except ValueError:
        fail(f"{path}: expected the released file key as DER or base64")


@app.command("rewrap")
def rewrap_command(
    input: Annotated[str, typer.Argument(help="Encrypted file (rewritten in place).")],
    token: TokenOpt,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Write here instead of in place.")
    ] = None,
    pin: PinOpt = None,
    container: ContainerOpt = None,
    add_cert: Annotated[
        list[str] | None, typer.Option("--add-cert", help="Add a recipient certificate (PEM).")
    ] = None,
    add_key: Annotated[
        list[str] | None, typer.Option("--add-key", help="Add a recipient public key (PEM).")
    ] = None,
    add_to: Annotated[
        list[str] | None, typer.Option("--add-to", help="Add an owner from the KMC directory.")
    ] = None,
    server: ServerOpt = None,
    anchor: AnchorOpt = None,
    remove: Annotated[
        list[str] | None,
        typer.Option("--remove", help="Remove the recipient with this key id (hex)."),
    ] = None,
    escrow_key: Annotated[
        str | None, typer.Option("--escrow-key", help="Set the escrow stanza to this key.")
    ] = None,
    escrow: Annotated[
        bool, typer.Option("--escrow", help="Set the escrow stanza to --server's KMC.")
    ] = False,
    remove_escrow: Annotated[
        bool, typer.Option("--remove-escrow", help="Drop the escrow stanza.")
    ] = False,
    recovered: Annotated[
        str | None,
        typer.Option(
            "--recovered",
            help="File key released by the KMC to this token (base64 or DER): add this "
            "token as a recipient.",
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Add or remove recipients by rewriting only the header (the payload is copied
    unchanged). Needs a token key that is a recipient, or a KMC-released file key."""
    tok, handle = _token(token, pin, container)
    if out is not None and Path(out).exists() and not force:
        fail(f"{out} exists; pass --force to overwrite it")
    with _file_errors(input):
        if recovered is not None:
            with open(input, "rb") as f:
                header = files.inspect(f)
            new = files.accept_reissued_stanza(header, _released(recovered), tok, handle)
            if out is None:
                files.replace_header(input, new)
            else:
                with open(input, "rb") as src, files.atomic_output(out) as dst:
                    src.seek(header.size)
                    dst.write(new.raw)
                    while piece := src.read(1 << 20):
                        dst.write(piece)
        else:
            anchors = functools.cache(lambda: _anchors(anchor, token))
            adds = _recipients(add_cert or [], add_key or [], add_to or [], server, anchors)
            new = files.rewrap_file(
                input,
                tok,
                handle,
                out=out,
                add=adds,
                remove=remove or [],
                escrow=_escrow(escrow_key, escrow, server, anchors),
                remove_escrow=remove_escrow,
            )
    err_console.print(f"rewrapped {out or input}: {len(new.stanzas)} stanza(s)", highlight=False)
