"""The mail server side: an SMTP submission server (aiosmtpd) that delivers into one
Maildir per recipient address, and accepts only S/MIME enveloped-data, so that the
server and its storage only ever hold ciphertext.

aiosmtpd receives a message whole before delivering it: ``max_size`` (default 512 MiB)
bounds the memory one message can take on the server.
"""

from __future__ import annotations

import mailbox
import re
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from mstcrypt.errors import PolicyError

__all__ = ["MailServer", "MaildirHandler", "mailbox_path"]

_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,190}$")


def mailbox_path(root: Path, address: str) -> Path:
    """The Maildir of ``address`` under ``root`` (the address lower-cased; anything
    that could leave ``root`` refused)."""
    if not _ADDRESS.match(address) or ".." in address or address.startswith(".") or "/" in address:
        raise PolicyError(f"not a deliverable address: {address!r}")
    return root / address.lower()


def is_smime_enveloped(message: bytes) -> bool:
    head, sep, _ = message.partition(b"\r\n\r\n")
    if not sep:
        head, sep, _ = message.partition(b"\n\n")
    if not sep:
        return False
    parsed = BytesHeaderParser(policy=default_policy).parsebytes(head + b"\r\n\r\n")
    return (
        parsed.get_content_type() == "application/pkcs7-mime"
        and parsed.get_param("smime-type") == "enveloped-data"
        and str(parsed.get("Content-Transfer-Encoding", "")).strip().lower() == "base64"
    )


class MaildirHandler:
    """aiosmtpd handler: RCPT checks the address (and the domain, when
    ``local_domains`` is given); DATA accepts S/MIME enveloped-data only (with
    ``require_encrypted``) and delivers one copy per recipient Maildir."""

    def __init__(
        self,
        root: Path,
        *,
        local_domains: tuple[str, ...] = (),
        require_encrypted: bool = True,
    ) -> None:
        self.root = Path(root)
        self.local_domains = tuple(d.lower() for d in local_domains)
        self.require_encrypted = require_encrypted
        self.delivered = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        try:
            mailbox_path(self.root, address)
        except PolicyError:
            return "553 5.1.3 not a deliverable address"
        domain = address.rpartition("@")[2].lower()
        if self.local_domains and domain not in self.local_domains:
            return "550 5.1.2 not a local domain; relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or b""
        if self.require_encrypted and not is_smime_enveloped(content):
            return "554 5.7.1 this server accepts S/MIME enveloped-data (encrypted mail) only"
        for rcpt in envelope.rcpt_tos:
            box = mailbox.Maildir(mailbox_path(self.root, rcpt), create=True)
            box.add(content)
        self.delivered += 1
        return "250 2.0.0 delivered"


class MailServer:
    """A running SMTP server (aiosmtpd's threaded Controller) on ``host:port``
    delivering into ``root``; a context manager."""

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 2525,
        local_domains: tuple[str, ...] = (),
        require_encrypted: bool = True,
        max_size: int = 512 * 1024 * 1024,
    ) -> None:
        from aiosmtpd.controller import Controller

        self.handler = MaildirHandler(
            root, local_domains=local_domains, require_encrypted=require_encrypted
        )
        self.host, self.port = host, port
        self._controller = Controller(
            self.handler, hostname=host, port=port, data_size_limit=max_size
        )

    def start(self) -> MailServer:
        self.handler.root.mkdir(parents=True, exist_ok=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> MailServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
