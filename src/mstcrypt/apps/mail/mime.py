"""The MIME layer of encrypted mail, streamed both ways in constant memory.

Writing: :class:`InnerMessage` is the protected message (its own From/To/Cc/Subject/
Date/Message-ID header fields, a text part and attachments, every part base64 with
76-character lines), whose exact length is known before a byte is read, so that the
signature and envelope around it can be written with definite DER lengths.
:class:`Base64Writer` writes the outer S/MIME body.

Reading: :func:`parse_inner` reads a multipart/mixed message line by line from a
``read(n)`` callable, decoding the text part into memory (bounded) and each attachment
into a sink; :class:`Base64Reader` decodes the outer body as a stream.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.header import Header
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from mstcrypt.apps.mail.errors import MailFormatError
from mstcrypt.errors import PolicyError

__all__ = [
    "Attachment",
    "Base64Reader",
    "Base64Writer",
    "InnerMessage",
    "ParsedInner",
    "b64_length",
    "header_value",
    "parse_headers",
    "parse_inner",
]

LINE = 57  # input bytes per 76-character base64 line
CHUNK = LINE * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_LINE = 8 * 1024
MAX_TEXT = 16 * 1024 * 1024
MAX_PARTS = 1000
_ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$"
)


def b64_length(n: int) -> int:
    """Length of ``n`` bytes as base64 in 76-character lines, each ending CRLF."""
    full, rest = divmod(n, LINE)
    return full * 78 + ((rest + 2) // 3 * 4 + 2 if rest else 0)


def check_address(address: str) -> str:
    """A bare e-mail address (local@domain), lower-cased domain; PolicyError otherwise."""
    if not isinstance(address, str) or not _ADDRESS.match(address) or len(address) > 254:
        raise PolicyError(f"not an e-mail address: {address!r}")
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def header_value(value: str) -> str:
    """A header field value, RFC 2047-encoded when not ASCII; CR/LF refused (header
    injection)."""
    if "\r" in value or "\n" in value or "\x00" in value:
        raise PolicyError("header values cannot contain CR, LF or NUL")
    if value.isascii() and all(32 <= ord(c) < 127 or c == "\t" for c in value):
        return value
    return Header(value, "utf-8", maxlinelen=998).encode()


def _filename_params(name: str) -> str:
    if name.isascii() and all(c.isalnum() or c in " ._-+()" for c in name):
        return f'filename="{name}"'
    from urllib.parse import quote

    return "filename*=utf-8''" + quote(name, safe="")


@dataclass(frozen=True)
class Attachment:
    """A file to attach, read twice (hash, then encrypt) in chunks: never whole."""

    path: Path
    filename: str = ""
    content_type: str = "application/octet-stream"
    size: int = field(default=-1, compare=False)

    @classmethod
    def from_path(cls, path: str | Path, content_type: str = "application/octet-stream"):  # type: ignore[no-untyped-def]
        p = Path(path)
        try:
            size = p.stat().st_size
        except OSError as exc:
            raise PolicyError(f"cannot read attachment {p.name}: {exc.strerror}") from None
        if not p.is_file():
            raise PolicyError(f"attachment {p.name} is not a regular file")
        name = p.name
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise PolicyError(f"unusable attachment name {name!r}")
        if not re.fullmatch(r"[\w.+-]+/[\w.+-]+", content_type):
            raise PolicyError(f"bad content type {content_type!r}")
        return cls(p, name, content_type, size)

    def part_header(self) -> bytes:
        return (
            f"Content-Type: {self.content_type}\r\n"
            f"Content-Disposition: attachment; {_filename_params(self.filename)}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()


def _b64_lines(data: bytes) -> bytes:
    """``data`` (a multiple of 57 bytes, or the last piece) as base64 lines."""
    if not data:
        return b""
    text = binascii.b2a_base64(data, newline=False)
    lines = [text[i : i + 76] for i in range(0, len(text), 76)]
    lines.append(b"")
    return b"\r\n".join(lines)


_WS = b"\r\n \t"


class _B64Decoder:
    """Incremental base64 decoding of text with line breaks (validated)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._carry = b""

    def feed(self, text: bytes) -> bytes:
        text = self._carry + text.translate(None, _WS)
        cut = len(text) // 4 * 4
        self._carry = text[cut:]
        try:
            return base64.b64decode(text[:cut], validate=True)
        except (binascii.Error, ValueError):
            raise MailFormatError(f"{self.what} is not valid base64") from None

    def close(self) -> None:
        if self._carry:
            raise MailFormatError(f"{self.what} ends in the middle of a base64 group")


class InnerMessage:
    """The protected message: header fields, a text part and attachments.

    :meth:`length` is exact before anything is read; :meth:`chunks` yields the bytes,
    reading each attachment in chunks, and fails if a file changed size meanwhile."""

    def __init__(
        self,
        *,
        sender: str,
        to: Sequence[str],
        cc: Sequence[str] = (),
        subject: str,
        text: str,
        attachments: Sequence[Attachment] = (),
        date: str | None = None,
        message_id: str | None = None,
    ) -> None:
        self.sender = check_address(sender)
        self.to = [check_address(a) for a in to]
        self.cc = [check_address(a) for a in cc]
        if not self.to and not self.cc:
            raise PolicyError("a message needs at least one recipient")
        self.subject = subject
        self.date = date or email.utils.formatdate(localtime=False, usegmt=True)
        domain = self.sender.rpartition("@")[2]
        self.message_id = message_id or f"<{secrets.token_hex(16)}@{domain}>"
        self.attachments = list(attachments)
        self.boundary = "=_mstcrypt_" + secrets.token_hex(16)
        fields = [
            ("From", self.sender),
            ("To", ", ".join(self.to)),
            *([("Cc", ", ".join(self.cc))] if self.cc else []),
            ("Subject", header_value(subject)),
            ("Date", header_value(self.date)),
            ("Message-ID", header_value(self.message_id)),
            ("MIME-Version", "1.0"),
            ("Content-Type", f'multipart/mixed; boundary="{self.boundary}"'),
        ]
        head = "".join(f"{k}: {v}\r\n" for k, v in fields) + "\r\n"
        self._head = head.encode("ascii")
        self._text = _b64_lines(text.encode("utf-8"))
        self._text_header = (
            f"--{self.boundary}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        self._close = f"--{self.boundary}--\r\n".encode()

    def length(self) -> int:
        n = len(self._head) + len(self._text_header) + len(self._text) + len(self._close)
        for a in self.attachments:
            n += len(f"--{self.boundary}\r\n") + len(a.part_header()) + b64_length(a.size)
        return n

    def chunks(self) -> Iterator[bytes]:
        yield self._head + self._text_header + self._text
        for a in self.attachments:
            yield f"--{self.boundary}\r\n".encode() + a.part_header()
            seen = 0
            try:
                with a.path.open("rb") as f:
                    while block := f.read(CHUNK):
                        seen += len(block)
                        if seen > a.size:
                            break
                        yield _b64_lines(block)
            except OSError as exc:
                raise PolicyError(f"cannot read attachment {a.filename}: {exc.strerror}") from None
            if seen != a.size:
                raise PolicyError(f"attachment {a.filename} changed while the message was built")
        yield self._close


class Base64Writer:
    """Writes bytes as base64, 76-character lines ending CRLF."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) >= CHUNK:
            whole = len(self._pending) // LINE * LINE
            self._out.write(_b64_lines(bytes(self._pending[:whole])))
            del self._pending[:whole]

    def close(self) -> None:
        self._out.write(_b64_lines(bytes(self._pending)))
        self._pending.clear()


class Base64Reader:
    """``read(n)`` of the bytes encoded by a base64 body (any line length, CRLF or LF)
    read from ``src`` to its end, decoded in blocks."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._dec = _B64Decoder("the message body")
        self._buf = bytearray()
        self._eof = False

    def read(self, n: int = CHUNK) -> bytes:
        while len(self._buf) < n and not self._eof:
            block = self._src.read(4 * CHUNK)
            if not block:
                self._eof = True
                self._dec.close()
                break
            self._buf += self._dec.feed(block)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


# --- reading the inner message -----------------------------------------------------


class _Lines:
    """Line reader over a ``read(n)`` callable; lines keep their CRLF/LF."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._buf = bytearray()
        self._eof = False

    def line(self) -> bytes:
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                out = bytes(self._buf[: i + 1])
                del self._buf[: i + 1]
                return out
            if len(self._buf) > MAX_LINE:
                raise MailFormatError("a MIME line is longer than 8 KiB")
            if self._eof:
                out = bytes(self._buf)
                self._buf.clear()
                return out
            chunk = self._read(CHUNK)
            if not chunk:
                self._eof = True
            self._buf += chunk

    def body(self, delim: bytes) -> Iterator[bytes]:
        """The raw bytes up to (not including) the next line that starts with
        ``delim``, in blocks; that line stays to be read. MailFormatError at the end
        of the input."""
        marker = b"\n" + delim
        while True:
            if self._buf.startswith(delim):
                return
            i = self._buf.find(marker)
            if i >= 0:
                yield bytes(self._buf[: i + 1])
                del self._buf[: i + 1]
                return
            keep = len(marker)
            if len(self._buf) > keep:
                yield bytes(self._buf[:-keep])
                del self._buf[:-keep]
            if self._eof:
                raise MailFormatError("the MIME message ends before its closing boundary")
            chunk = self._read(CHUNK)
            if not chunk:
                self._eof = True
            self._buf += chunk

    def rest(self) -> None:
        """Consume everything left (the epilogue), bounded per line."""
        while self.line():
            pass


def parse_headers(lines: Callable[[], bytes], what: str) -> Any:
    """Read a header block up to its empty line; the email package's Message."""
    raw = bytearray()
    while True:
        line = lines()
        if not line:
            raise MailFormatError(f"{what} ends inside its header")
        if line in (b"\r\n", b"\n"):
            break
        raw += line
        if len(raw) > MAX_HEADER_BYTES:
            raise MailFormatError(f"{what} header is larger than 64 KiB")
    return BytesHeaderParser(policy=default_policy).parsebytes(bytes(raw) + b"\r\n")


class Sink(Protocol):
    def write(self, data: bytes) -> Any: ...


@dataclass
class ParsedPart:
    filename: str
    content_type: str
    size: int


@dataclass
class ParsedInner:
    headers: dict[str, str]
    text: str
    attachments: list[ParsedPart]


def _decode_part(
    lines: _Lines, boundary: bytes, sink: Sink | None, limit: int | None
) -> tuple[int, bytes, bool]:
    """Decode a base64 part body into ``sink`` (or return it when sink is None) up to
    the next boundary line; returns (size, data if no sink, closing boundary seen)."""
    delim = b"--" + boundary
    dec = _B64Decoder("a MIME part")
    size = 0
    kept = bytearray()
    while True:
        for block in lines.body(delim):
            data = dec.feed(block)
            size += len(data)
            if sink is not None:
                sink.write(data)
            else:
                kept += data
                if limit is not None and len(kept) > limit:
                    raise MailFormatError("the text part is larger than 16 MiB")
        line = lines.line().rstrip(b"\r\n").rstrip(b" \t")
        if line in (delim, delim + b"--"):
            dec.close()
            return size, bytes(kept), line == delim + b"--"
        # a line that only starts like the boundary: it is part of the body
        data = dec.feed(line)
        size += len(data)
        if sink is not None:
            sink.write(data)
        else:
            kept += data


def _filename(part: Any) -> str:
    name = part.get_filename() or ""
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in ("", ".", "..") or any(ord(c) < 32 for c in name):
        name = "attachment"
    return name[:200]


def parse_inner(
    read: Callable[[int], bytes], open_sink: Callable[[str], Sink] | None
) -> ParsedInner:
    """Parse the protected message from ``read``: its header fields, the text part, and
    each attachment decoded into ``open_sink(filename)`` (None: counted and dropped)."""
    lines = _Lines(read)
    top = parse_headers(lines.line, "the protected message")
    if top.get_content_type() != "multipart/mixed":
        raise MailFormatError(
            f"the protected message is {top.get_content_type()}; expected multipart/mixed"
        )
    boundary = top.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise MailFormatError("the protected message has no usable MIME boundary")
    b = boundary.encode("ascii", "replace")
    headers = {
        k: str(top[k]) for k in ("From", "To", "Cc", "Subject", "Date", "Message-ID") if top[k]
    }
    # preamble up to the first boundary
    while True:
        line = lines.line()
        if not line:
            raise MailFormatError("the MIME message has no parts")
        if line.rstrip(b"\r\n").rstrip(b" \t") == b"--" + b:
            break
    text_parts: list[str] = []
    parts: list[ParsedPart] = []
    closed = False
    while not closed:
        if len(parts) + len(text_parts) >= MAX_PARTS:
            raise MailFormatError("too many MIME parts")
        ph = parse_headers(lines.line, "a MIME part")
        cte = str(ph.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte != "base64":
            raise MailFormatError(f"MIME part transfer encoding {cte or '7bit'!r}; expected base64")
        disposition = ph.get_content_disposition()
        if disposition == "attachment":
            name = _filename(ph)
            sink = open_sink(name) if open_sink is not None else None
            size, _, closed = _decode_part(lines, b, sink if sink is not None else _Null(), None)
            parts.append(ParsedPart(name, ph.get_content_type(), size))
        elif ph.get_content_type() == "text/plain":
            _, data, closed = _decode_part(lines, b, None, MAX_TEXT)
            charset = ph.get_content_charset() or "utf-8"
            try:
                text_parts.append(data.decode(charset))
            except (LookupError, UnicodeDecodeError):
                raise MailFormatError(f"the text part is not valid {charset}") from None
        else:
            raise MailFormatError(f"unexpected MIME part {ph.get_content_type()}")
    lines.rest()
    return ParsedInner(headers, "\n".join(text_parts), parts)


class _Null:
    def write(self, data: bytes) -> None:
        del data
