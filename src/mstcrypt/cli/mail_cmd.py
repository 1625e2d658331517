"""``mstcrypt mail serve|send|list|read``: signed and encrypted mail between enrolled
terminals (docs/mail.md).

``serve`` runs the SMTP server (aiosmtpd) delivering into a Maildir per address and
refusing anything but S/MIME enveloped-data. ``send`` looks the recipients up in the
KMC directory (validated; an unknown or revoked recipient stops the send), signs with
the token's signing key, envelopes for every recipient and the sender, and submits over
SMTP; the sent copy goes to the local store. ``list`` fetches new messages from the
Maildir into the local store (encrypted under a key only the token opens) and lists
them with their protected headers; ``read`` opens one, reports every check and saves
the attachments (only when every check passed).
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer

from mstcrypt.cli._common import EXIT_INVALID, console, err_console, fail, open_token, read_input

app = typer.Typer(help="Signed and encrypted mail (S/MIME on GM/T 0010, SM2/SM3/SM4).",
                  no_args_is_help=True)  # fmt: skip

TokenOpt = Annotated[str, typer.Option("--token", help="Soft token file.")]
PinOpt = Annotated[str | None, typer.Option("--pin", envvar="MSTCRYPT_PIN", help="Token PIN.")]
ContainerOpt = Annotated[str, typer.Option("--container", help="Token container.")]
ServerOpt = Annotated[str, typer.Option("--server", help="Platform URL (KMC directory, CRLs).")]
CaOpt = Annotated[
    str | None, typer.Option("--ca-file", help="Root CA (PEM) instead of the token's preset.")
]
StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="Local mail store (default: the token path with .mail)."),
]
MaildirOpt = Annotated[str, typer.Option("--maildir", help="Maildir root of the mail server.")]


def _identity(token: str, pin: str | None, container: str) -> tuple[Any, Any]:
    from mstcrypt.apps.mail import MailIdentity

    tok = open_token(token, pin)
    return tok, MailIdentity.from_token(tok, container)


def _store(store: str | None, token: str, identity: Any) -> Any:
    from mstcrypt.apps.mail.store import LocalStore

    return LocalStore(Path(store) if store else Path(token).with_suffix(".mail"), identity)


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        fail(f"--smtp must be HOST:PORT, got {value!r}")
    return host, int(port)


@app.command("serve")
def serve(
    maildir: MaildirOpt,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 2525,
    domain: Annotated[
        list[str] | None, typer.Option("--domain", help="Accept mail for these domains only.")
    ] = None,
) -> None:
    """Run the SMTP server into MAILDIR until interrupted (Ctrl-C)."""
    import time

    from mstcrypt.apps.mail.server import MailServer

    with MailServer(Path(maildir), host=host, port=port, local_domains=tuple(domain or ())):
        err_console.print(f"SMTP on {host}:{port}, delivering into {maildir} (Ctrl-C stops)")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


@app.command("send")
def send(
    token: TokenOpt,
    server: ServerOpt,
    to: Annotated[list[str], typer.Option("--to", help="Recipient address (repeatable).")],
    subject: Annotated[str, typer.Option("--subject", help="Subject (protected).")],
    smtp: Annotated[str, typer.Option("--smtp", help="SMTP server HOST:PORT.")],
    cc: Annotated[list[str] | None, typer.Option("--cc", help="Copy to (repeatable).")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Message text.")] = None,
    body: Annotated[
        str | None, typer.Option("--body", help="File with the message text ('-': stdin).")
    ] = None,
    attach: Annotated[
        list[str] | None, typer.Option("--attach", help="File to attach (repeatable).")
    ] = None,
    pin: PinOpt = None,
    container: ContainerOpt = "main",
    ca_file: CaOpt = None,
    store: StoreOpt = None,
) -> None:
    """Sign, encrypt (for every recipient and yourself) and send a message."""
    from mstcrypt.apps.mail import Attachment, InnerMessage, compose
    from mstcrypt.apps.mail.recipients import Directory
    from mstcrypt.apps.mail.transport import send_file
    from mstcrypt.cli.platform import _anchors
    from mstcrypt.client import Client

    if text is not None and body is not None:
        fail("give --text or --body, not both")
    message = text if text is not None else (read_input(body).decode() if body else "")
    tok, me = _identity(token, pin, container)
    files = [Attachment.from_path(p) for p in attach or ()]
    inner = InnerMessage(sender=me.address, to=to, cc=cc or (), subject=subject, text=message,
                         attachments=files)  # fmt: skip
    with Client(server, anchors=_anchors(ca_file, tok)) as client:
        certs = Directory(client).certificates([*inner.to, *inner.cc])
    local = _store(store, token, me)
    local._store_key()  # creates the store (and its key) before anything is written
    sent_dir = local.path / "sent"
    sent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    spool = sent_dir / f".{secrets.token_hex(8)}.spool"
    try:
        with spool.open("wb") as f:
            info = compose(f, me, inner, certs)
        send_file(_hostport(smtp), me.address, list(info.recipients), spool)
        mid = local.add("sent", spool, {
            "from": me.address, "to": ", ".join(info.recipients), "subject": subject,
            "date": inner.date, "message_id": info.message_id, "checked": "sent",
        }, move=True)  # fmt: skip
    finally:
        with contextlib.suppress(FileNotFoundError):
            spool.unlink()
    console.print(
        f"sent {info.message_id} to {', '.join(info.recipients)} ({info.size} bytes, "
        f"signed and encrypted; stored as {mid})",
        soft_wrap=True,
    )


def _fetch(local: Any, me: Any, maildir: Path) -> int:
    from mstcrypt.apps.mail import MailError, open_message
    from mstcrypt.apps.mail.transport import list_mailbox, open_mailbox_entry

    new = 0
    for entry in list_mailbox(maildir, me.address):
        if local.has_source(entry.key):
            continue
        info: dict[str, Any] = {"source": entry.key, "received": entry.received.isoformat()}
        with open_mailbox_entry(maildir, me.address, entry.key) as f:
            try:
                r = open_message(f, me, validator=lambda c: [], headers_only=True, strict=False)
                info.update(
                    {k.lower().replace("-", "_"): v for k, v in r.headers.items()},
                    checked="not yet",
                )
            except MailError as exc:
                info.update(subject="(unreadable)", checked=f"error: {exc}")
        src = Path(getattr(f, "name", ""))
        local.add("inbox", src, info)
        new += 1
    return new


@app.command("list")
def list_(
    token: TokenOpt,
    maildir: Annotated[
        str | None, typer.Option("--maildir", help="Fetch new mail from this Maildir first.")
    ] = None,
    folder: Annotated[str | None, typer.Option("--folder", help="inbox or sent.")] = None,
    pin: PinOpt = None,
    container: ContainerOpt = "main",
    store: StoreOpt = None,
) -> None:
    """Fetch new messages into the local store and list them (protected headers)."""
    _, me = _identity(token, pin, container)
    local = _store(store, token, me)
    if maildir:
        n = _fetch(local, me, Path(maildir))
        err_console.print(f"{n} new message(s) fetched from {maildir}")
    for mid, e in local.entries(folder):
        fields = [
            mid,
            e["folder"],
            e.get("date", ""),
            f"from {e.get('from', '')}",
            f"to {e.get('to', '')}",
            e.get("subject", ""),
            f"[{e.get('checked', '')}]",
        ]
        console.print("  ".join(fields), markup=False, highlight=False, soft_wrap=True)


@app.command("read")
def read(
    message_id: Annotated[str, typer.Argument(help="Message id (from `mail list`).")],
    token: TokenOpt,
    server: ServerOpt,
    save_dir: Annotated[
        str | None, typer.Option("--save-dir", help="Save the attachments here.")
    ] = None,
    pin: PinOpt = None,
    container: ContainerOpt = "main",
    ca_file: CaOpt = None,
    store: StoreOpt = None,
) -> None:
    """Open a message: decrypt, verify, check the signer against the CA, the CRL and
    the From address; print each check, the protected headers and the text."""
    from mstcrypt.apps.mail import open_message
    from mstcrypt.apps.mail.recipients import platform_validator
    from mstcrypt.cli.platform import _anchors
    from mstcrypt.client import Client

    tok, me = _identity(token, pin, container)
    local = _store(store, token, me)
    with Client(server, anchors=_anchors(ca_file, tok)) as client, local.open(message_id) as f:
        r = open_message(f, me, validator=platform_validator(client),
                         save_dir=Path(save_dir) if save_dir else None, strict=False)  # fmt: skip
    for c in r.checks:
        mark = "[green]✓[/green]" if c.ok else "[red]✗[/red]"
        console.print(f"{mark} {c.name}: {c.detail}", soft_wrap=True, markup=True)
    local.update(message_id, checked="all passed" if r.trusted else "FAILED")
    for k, v in r.headers.items():
        console.print(f"{k}: {v}", soft_wrap=True, markup=False, highlight=False)
    console.print("", markup=False)
    console.print(r.text, markup=False, highlight=False, soft_wrap=True)
    for a in r.attachments:
        console.print(f"attachment: {a.filename} ({a.size} bytes, {a.content_type})", markup=False)
    for p in r.saved:
        console.print(f"saved: {p}", markup=False)
    if not r.trusted:
        console.print("[red]NOT TRUSTED:[/red] a check failed; attachments not saved", markup=True)
        raise typer.Exit(EXIT_INVALID)
