"""Secure instant messaging (T/ZSA 37-2020 §7.5, Annex D).

Envelope (``docs/im-format.md``)::

    from mstcrypt.apps.im import Text, seal, open_envelope, parse
    raw = seal(Text("hello"), group="g1", key_version=3, group_key=gk, sender="alice",
               device=dev, sender_public=pub, sign=priv.sign, seq=1, timestamp_ms=now)
    msg = open_envelope(raw, sender_public=pub, group_key=gk)
"""

from __future__ import annotations

from mstcrypt.apps.im.content import (
    Content,
    ContentType,
    Delete,
    Edit,
    FileRef,
    Location,
    Poll,
    Reaction,
    Reply,
    Text,
    Vote,
    decode_content,
    encode_content,
)
from mstcrypt.apps.im.errors import (
    ImContentError,
    ImDecryptError,
    ImError,
    ImFormatError,
    ImKeyVersionError,
    ImReplayError,
    ImSenderError,
    ImSignatureError,
)
from mstcrypt.apps.im.format import (
    MAX_ENVELOPE,
    Envelope,
    Opened,
    SequenceTracker,
    key_id,
    open_envelope,
    parse,
    seal,
    verify_envelope,
)

__all__ = [
    "MAX_ENVELOPE",
    "Content",
    "ContentType",
    "Delete",
    "Edit",
    "Envelope",
    "FileRef",
    "ImContentError",
    "ImDecryptError",
    "ImError",
    "ImFormatError",
    "ImKeyVersionError",
    "ImReplayError",
    "ImSenderError",
    "ImSignatureError",
    "Location",
    "Opened",
    "Poll",
    "Reaction",
    "Reply",
    "SequenceTracker",
    "Text",
    "Vote",
    "decode_content",
    "encode_content",
    "key_id",
    "open_envelope",
    "parse",
    "seal",
    "verify_envelope",
]
