"""Terminal-side transport: SMTP submission of a message file (streamed, dot-stuffed)
and reading a Maildir."""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from mstcrypt.apps.mail.errors import MailError
from mstcrypt.apps.mail.server import mailbox_path

__all__ = ["MailboxEntry", "list_mailbox", "open_mailbox_entry", "send_file"]


def send_file(
    server: tuple[str, int],
    mail_from: str,
    rcpt_to: Sequence[str],
    path: Path,
    *,
    timeout: float = 60.0,
) -> None:
    """Submit the message in ``path`` over SMTP without loading it: DATA is sent line
    by line with CRLF line ends and dot-stuffing."""
    host, port = server
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as s:
            s.ehlo()
            code, msg = s.mail(mail_from)
            if code != 250:
                raise MailError(f"SMTP MAIL FROM refused: {code} {msg.decode(errors='replace')}")
            for r in rcpt_to:
                code, msg = s.rcpt(r)
                if code not in (250, 251):
                    raise MailError(
                        f"SMTP RCPT TO {r} refused: {code} {msg.decode(errors='replace')}"
                    )
            s.putcmd("data")
            code, msg = s.getreply()
            if code != 354:
                raise MailError(f"SMTP DATA refused: {code} {msg.decode(errors='replace')}")
            buf = bytearray()
            with path.open("rb") as f:
                for line in f:
                    line = line.rstrip(b"\r\n")
                    if line.startswith(b"."):
                        line = b"." + line
                    buf += line + b"\r\n"
                    if len(buf) >= 1 << 16:
                        s.send(bytes(buf))
                        buf.clear()
            buf += b".\r\n"
            s.send(bytes(buf))
            code, msg = s.getreply()
            if code != 250:
                raise MailError(
                    f"SMTP server refused the message: {code} {msg.decode(errors='replace')}"
                )
    except (OSError, smtplib.SMTPException) as exc:
        raise MailError(f"SMTP to {host}:{port} failed: {exc}") from None


@dataclass(frozen=True)
class MailboxEntry:
    key: str
    size: int
    received: datetime


def _entries(root: Path, address: str) -> list[tuple[str, Path]]:
    path = mailbox_path(root, address)
    out = []
    for sub in ("new", "cur"):
        d = path / sub
        if d.is_dir():
            for f in d.iterdir():
                if not f.name.startswith(".") and f.is_file():
                    out.append((f.name.split(":", 1)[0], f))
    return out


def list_mailbox(root: Path, address: str) -> list[MailboxEntry]:
    """The messages in ``address``'s Maildir (new and cur), oldest first."""
    out = []
    for key, f in _entries(root, address):
        st = f.stat()
        out.append(MailboxEntry(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
    return sorted(out, key=lambda e: (e.received, e.key))


def open_mailbox_entry(root: Path, address: str, key: str) -> BinaryIO:
    """The message file ``key`` of ``address``'s Maildir, opened for reading."""
    for k, f in _entries(root, address):
        if k == key:
            return f.open("rb")
    raise MailError(f"no message {key!r} in the mailbox of {address}")
