"""Message contents (``docs/im-format.md`` §5): what is inside the encrypted body.

The payload is a UTF-8 JSON object with an exact set of keys per content type, parsed
strictly (no duplicate keys, no unknown keys, bounded strings, integers and lists), then
padded (ISO/IEC 7816-4: ``0x80`` then zeros) to a multiple of :data:`PAD_BLOCK` bytes so
that the ciphertext length hides the exact text length.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

from mstcrypt.apps.im.errors import ImContentError

__all__ = [
    "MAX_PAYLOAD",
    "PAD_BLOCK",
    "Content",
    "ContentType",
    "Delete",
    "Edit",
    "FileRef",
    "Location",
    "Poll",
    "Reaction",
    "Reply",
    "Text",
    "Vote",
    "decode_content",
    "encode_content",
]

#: the largest padded plaintext payload (the body is this plus the 16-byte tag)
MAX_PAYLOAD = 64 * 1024
PAD_BLOCK = 32
MAX_TEXT = 16_384
MAX_NAME = 255
MAX_FILE_SIZE = 1 << 40
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MEDIA = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")


class ContentType(enum.IntEnum):
    TEXT = 1
    FILE = 2
    REPLY = 3
    EDIT = 4
    DELETE = 5
    REACTION = 6
    POLL = 7
    VOTE = 8
    LOCATION = 9


#: C0 controls other than tab and newline, DEL and the C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _bad(msg: str) -> ImContentError:
    return ImContentError("bad-content", msg)


def _str(d: dict[str, Any], key: str, lo: int, hi: int) -> str:
    v = d[key]
    if not isinstance(v, str) or not lo <= len(v) <= hi:
        raise _bad(f"{key!r} must be a string of {lo}..{hi} characters")
    if _CONTROL.search(v):
        raise _bad(f"{key!r} contains control characters")
    return v


def _int(d: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = d[key]
    if type(v) is not int or not lo <= v <= hi:
        raise _bad(f"{key!r} must be an integer in {lo}..{hi}")
    return v


def _ref(d: dict[str, Any], key: str = "ref") -> bytes:
    v = d[key]
    if not isinstance(v, str) or not _HEX32.fullmatch(v):
        raise _bad(f"{key!r} must be a message id (32 lowercase hex digits)")
    return bytes.fromhex(v)


@dataclass(frozen=True)
class Content:
    """Base of the content types: frozen dataclasses whose fields are the payload's keys
    (bytes as lowercase hex). Construction and parsing apply the same checks."""

    TYPE: ClassVar[ContentType]

    def _payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = (
                v.hex() if isinstance(v, bytes) else list(v) if isinstance(v, tuple) else v
            )
        return out

    def __post_init__(self) -> None:
        for k, v in type(self)._check(self._payload()).items():
            object.__setattr__(self, k, v)

    @classmethod
    def _check(cls, d: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Content):
    TYPE: ClassVar[ContentType] = ContentType.TEXT
    text: str

    @classmethod
    def _check(cls, d: dict[str, Any]) -> dict[str, Any]:
        return {"text": _str(d, "text", 1, MAX_TEXT)}


@dataclass(frozen=True)
class FileRef(Content):
    """A file, image, voice note or video (``media_type`` tells which): the bytes are an
    encrypted blob on the server (:mod:`mstcrypt.apps.im.blob`); its key travels here."""

    TYPE: ClassVar[ContentType] = ContentType.FILE
    name: str
    media_type: str
    size: int
    blob: str
    key: bytes
    digest: bytes
    caption: str = ""

    @classmethod
    def _check(cls, d: dict[str, Any]) -> dict[str, Any]:
        mt = d["media_type"]
        if not isinstance(mt, str) or not _MEDIA.fullmatch(mt):
            raise _bad("'media_type' must be a lowercase type/subtype")
        name = _str(d, "name", 1, MAX_NAME)
        if "/" in name or "\\" in name or name in (".", ".."):
            raise _bad("'name' must be a bare file name")
        blob, key, digest = d["blob"], d["key"], d["digest"]
        if not isinstance(blob, str) or not _HEX32.fullmatch(blob):
            raise _bad("'blob' must be a blob id (32 lowercase hex digits)")
        if not isinstance(key, str) or not _HEX32.fullmatch(key):
            raise _bad("'key' must be 16 bytes in lowercase hex")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise _bad("'digest' must be an SM3 digest in lowercase hex")
        return {
            "name": name,
            "media_type": mt,
            "size": _int(d, "size", 0, MAX_FILE_SIZE),
            "blob": blob,
            "key": bytes.fromhex(key),
            "digest": bytes.fromhex(digest),
            "caption": _str(d, "caption", 0, MAX_TEXT),
        }

    def __repr__(self) -> str:  # the blob key is a secret
        return f"FileRef(name={self.name!r}, media_type={self.media_type!r}, size={self.size})"


@dataclass(frozen=True)
class Reply(Content):
    TYPE: ClassVar[ContentType] = ContentType.REPLY
    ref: bytes
    text: str

    @classmethod
    def _check(cls, d: dict[str, Any]) -> dict[str, Any]:
        return {"ref": _ref(d), "text": _str(d, "text", 1, MAX_TEXT)}


@dataclass(frozen=True)
class Edit(Content):
    """Replaces the text of an earlier message of the same sender."""

    TYPE: ClassVar[ContentType] = ContentType.EDIT
    ref: bytes
    text: str

    @classmethod
    def _check(cls, d: dict[str, Any]) -> dict[str, Any]:
        return {"ref": _ref(d), "text": _str(d, "text", 1, MAX_TEXT)}


@dataclass(frozen=True)
class Delete(Content):
    """Withdraws an earlier message of the same sender."""

    TYPE: ClassVar[ContentType] = ContentType.DELETE
    ref: bytes

    @classmethod
    def _check(cls, d: dict[str, Any]) -> dict[str, Any]:
        return {"ref": _ref(d)}


@dataclass(frozen=True)
class Reaction(Content):
    TYPE: ClassVar[ContentType] = ContentType.REACTION
    ref: bytes
    emoji: str
    remove: bool = False

    @classmethod
    def _check(cls, d: dict[str, Any]) -> dict[str, Any]:
        if type(d["remove"]) is not bool:
            raise _bad("'remove' must be true or false")
        return {"ref": _ref(d), "emoji": _str(d, "emoji", 1, 16), "remove": d["remove"]}


@dataclass(frozen=True)
class Poll(Content):
    TYPE: ClassVar[ContentType] = ContentType.POLL
    question: str
    options: tuple[str, ...]

    @classmethod
    def _check(cls, d: dict[str, Any]) -> dict[str, Any]:
        opts = d["options"]
        if not isinstance(opts, list) or not 2 <= len(opts) <= 16:
            raise _bad("'options' must be a list of 2..16 strings")
        checked = tuple(_str({"option": o}, "option", 1, 200) for o in opts)
        if len(set(checked)) != len(checked):
            raise _bad("'options' must be distinct")
        return {"question": _str(d, "question", 1, 1000), "options": checked}


@dataclass(frozen=True)
class Vote(Content):
    TYPE: ClassVar[ContentType] = ContentType.VOTE
    ref: bytes
    choice: int

    @classmethod
    def _check(cls, d: dict[str, Any]) -> dict[str, Any]:
        return {"ref": _ref(d), "choice": _int(d, "choice", 0, 15)}


@dataclass(frozen=True)
class Location(Content):
    TYPE: ClassVar[ContentType] = ContentType.LOCATION
    lat: float
    lon: float
    label: str = ""

    @classmethod
    def _check(cls, d: dict[str, Any]) -> dict[str, Any]:
        for k, lim in (("lat", 90.0), ("lon", 180.0)):
            v = d[k]
            if type(v) not in (int, float) or not math.isfinite(v) or not -lim <= v <= lim:
                raise _bad(f"{k!r} must be a number in -{lim:g}..{lim:g}")
        return {"lat": float(d["lat"]), "lon": float(d["lon"]), "label": _str(d, "label", 0, 200)}


_TYPES: dict[ContentType, type[Content]] = {
    c.TYPE: c for c in (Text, FileRef, Reply, Edit, Delete, Reaction, Poll, Vote, Location)
}
_KEYS = {t: frozenset(f.name for f in fields(c)) for t, c in _TYPES.items()}


def encode_content(content: Content) -> bytes:
    """The padded payload of ``content`` (§5)."""
    if not isinstance(content, Content) or type(content) not in _TYPES.values():
        raise _bad("content must be one of the content types of mstcrypt.apps.im")
    raw = json.dumps(
        content._payload(), ensure_ascii=False, separators=(",", ":"), sort_keys=True
    ).encode()
    padded = raw + b"\x80" + b"\x00" * (-(len(raw) + 1) % PAD_BLOCK)
    if len(padded) > MAX_PAYLOAD:
        raise ImContentError("too-large", f"the payload exceeds {MAX_PAYLOAD} bytes")
    return padded


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _bad("duplicate key in the payload")
    return d


def _no_constant(name: str) -> Any:
    raise _bad(f"{name} is not a valid payload number")


def decode_content(ctype: ContentType, padded: bytes) -> Content:
    """Parse a decrypted payload of type ``ctype`` strictly (§5)."""
    if len(padded) % PAD_BLOCK or len(padded) > MAX_PAYLOAD:
        raise ImContentError("bad-padding", "the payload length is not a padded length")
    end = padded.rstrip(b"\x00")
    if not end.endswith(b"\x80") or len(padded) - len(end) >= PAD_BLOCK:
        raise ImContentError("bad-padding", "the payload padding is malformed")
    raw = end[:-1]
    try:
        d = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
    except ImContentError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("the payload is not UTF-8 JSON") from None
    if not isinstance(d, dict):
        raise _bad("the payload is not a JSON object")
    cls = _TYPES[ctype]
    required = {f.name for f in fields(cls) if f.default is MISSING}
    if not required <= d.keys() <= _KEYS[ctype]:
        raise _bad(f"a {ctype.name.lower()} payload has the keys {sorted(_KEYS[ctype])}")
    for f in fields(cls):
        if f.name not in d:
            d[f.name] = f.default
    return cls(**cls._check(d))
