"""Encrypted mail (T/ZSA 37-2020 7.2): signed then enveloped S/MIME on GM/T 0010 CMS.

Terminal side::

    from mstcrypt.apps import mail
    me = mail.MailIdentity.from_token(token, "main")          # logged-in soft token
    certs = mail.Directory(client).certificates(["bob@x.cn"])  # validated, cached
    inner = mail.InnerMessage(sender=me.address, to=["bob@x.cn"], subject="S",
                              text="body", attachments=[mail.Attachment.from_path(p)])
    with open(spool, "wb") as f:
        mail.compose(f, me, inner, certs)                     # constant memory
    mail.send_file(("127.0.0.1", 2525), me.address, ["bob@x.cn"], spool)
    report = mail.open_message(f, me, validator=mail.platform_validator(client))

Server side: :class:`MailServer` (aiosmtpd) delivers into a Maildir per recipient and
accepts only S/MIME enveloped-data, so the server holds ciphertext only.
The wire form, the checks made on opening and the errors: docs/mail.md.
"""

from __future__ import annotations

from mstcrypt.apps.mail.errors import (
    MailError,
    MailFormatError,
    MailVerificationError,
    RecipientError,
)
from mstcrypt.apps.mail.message import (
    SUBJECT_PLACEHOLDER,
    Check,
    ComposedMail,
    MailIdentity,
    OpenedMail,
    certificate_addresses,
    compose,
    open_message,
    trust_validator,
)
from mstcrypt.apps.mail.mime import Attachment, InnerMessage
from mstcrypt.apps.mail.recipients import Directory, platform_validator
from mstcrypt.apps.mail.server import MailServer
from mstcrypt.apps.mail.store import LocalStore
from mstcrypt.apps.mail.transport import list_mailbox, open_mailbox_entry, send_file

__all__ = [
    "SUBJECT_PLACEHOLDER",
    "Attachment",
    "Check",
    "ComposedMail",
    "Directory",
    "InnerMessage",
    "LocalStore",
    "MailError",
    "MailFormatError",
    "MailIdentity",
    "MailServer",
    "MailVerificationError",
    "OpenedMail",
    "RecipientError",
    "certificate_addresses",
    "compose",
    "list_mailbox",
    "open_mailbox_entry",
    "open_message",
    "platform_validator",
    "send_file",
    "trust_validator",
]
