"""Strict HTTP/1.1 request framing for the gateway's ``http`` mode (no I/O here).

The gateway sits between untrusted terminals and internal services that trust the
identity headers it adds, so it must never let a request be read two ways (request
smuggling) nor let a terminal forge what the gateway asserts:

- header names are RFC 9110 tokens; values hold no control characters; obs-fold, bare
  CR or LF, whitespace before the colon are refused (400);
- ``Content-Length`` is 1 to 18 digits, given once; ``Transfer-Encoding`` is exactly
  ``chunked``, given once, and only in HTTP/1.1; both together are refused; so is any
  framing or ``Host`` header spelled with ``_`` (a CGI/WSGI server would read
  ``Content_Length`` as ``Content-Length``);
- every ``X-MST-Client-*`` header and every forwarding header (``Forwarded``,
  ``X-Forwarded-*``, ``X-Real-IP``) is removed under any spelling (case, ``_`` for
  ``-``); the gateway adds its own;
- hop-by-hop headers (``Connection`` and the names it lists, ``Keep-Alive``, ``TE``,
  ``Trailer``, ``Upgrade``, ``Proxy-*``) are not forwarded. The one protocol switch the
  gateway relays is a WebSocket opening handshake (RFC 6455 §4.1) on a route that allows
  it: :attr:`RequestHead.websocket` tells the caller, which then forwards the request
  with exactly ``Upgrade: websocket`` and ``Connection: Upgrade`` (see
  :meth:`RequestHead.encode`); every other upgrade (h2c, TLS…) is dropped;
- the body framing is re-emitted: ``Content-Length: n`` as given, or chunks as
  ``%X CRLF data CRLF`` with chunk extensions dropped, and no trailers (a request's
  trailers are read, checked and dropped). Chunk-size lines are 1 to 16 hex digits,
  optionally followed by strictly formed extensions, then CRLF: no sign, ``0x``,
  ``_`` or whitespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mstcrypt.errors import PolicyError

__all__ = [
    "IDENTITY_PREFIX",
    "MAX_CHUNK_LINE",
    "MAX_FIELDS",
    "HTTPRequestError",
    "RequestHead",
    "ResponseHead",
    "check_trailer_line",
    "normalise_name",
    "parse_chunk_size",
    "parse_request_head",
    "parse_response_head",
]

#: Headers whose normalised name starts with this are the gateway's to set.
IDENTITY_PREFIX = b"x-mst-client-"
#: The longest chunk-size line accepted (size, extensions and CRLF).
MAX_CHUNK_LINE = 1024
#: The most header fields in a request head or a trailer section.
MAX_FIELDS = 128

_TOKEN_RE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN = re.compile(_TOKEN_RE + rb"\Z")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_EXT = rb"(?:;" + _TOKEN_RE + rb"(?:=(?:" + _TOKEN_RE + rb"|" + _QUOTED + rb"))?)"
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(" + _CHUNK_EXT + rb"*)\r\n\Z")

_FORWARDING = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-real-ip",
    }
)
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
#: Names that decide how the request is read: only their exact (``-``) spelling is
#: accepted, and a ``Connection`` header may not list them.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})


class HTTPRequestError(PolicyError):
    """A request the gateway refuses to forward; ``status`` is the HTTP status sent back
    (400, or 431 for an oversized head). The message names the rule, never a value."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def normalise_name(name: bytes) -> bytes:
    """The name as a CGI/WSGI layer would see it: lower case, ``_`` read as ``-``."""
    return name.lower().replace(b"_", b"-")


def _is_sensitive(norm: bytes) -> bool:
    return norm.startswith(IDENTITY_PREFIX) or norm in _FORWARDING


@dataclass
class RequestHead:
    """A parsed request head: what to forward and how the body is framed."""

    method: bytes
    target: bytes
    version: bytes
    #: header fields kept, in order, as (name, value) with the value trimmed
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_length: int | None = None
    chunked: bool = False
    close: bool = False
    #: the protocols of the ``Upgrade`` header (lower case), when ``Connection`` lists
    #: ``upgrade``; empty otherwise
    upgrade: tuple[bytes, ...] = ()

    @property
    def websocket(self) -> bool:
        """True for a WebSocket opening handshake (RFC 6455 §4.1): ``GET`` in HTTP/1.1,
        ``Upgrade: websocket`` alone, ``Connection`` listing ``upgrade`` (not ``close``),
        no body."""
        return (
            self.method == b"GET"
            and self.version == b"HTTP/1.1"
            and self.upgrade == (b"websocket",)
            and not self.close
            and not self.chunked
            and not self.content_length
        )

    def encode(self, added: list[tuple[bytes, bytes]], *, websocket: bool = False) -> bytes:
        """The head to send upstream: the kept fields, then ``added`` (the gateway's
        identity and forwarding headers), then the re-emitted framing. ``websocket``
        (only for a :attr:`websocket` request on a route that allows it) adds
        ``Upgrade: websocket`` and ``Connection: Upgrade``."""
        out = [b"%s %s %s\r\n" % (self.method, self.target, self.version)]
        out += [b"%s: %s\r\n" % (n, v) for n, v in (*self.fields, *added)]
        if websocket:
            if not self.websocket:
                raise HTTPRequestError("not a WebSocket opening handshake")
            out.append(b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
        if self.chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        elif self.content_length is not None:
            out.append(b"Content-Length: %d\r\n" % self.content_length)
        if self.close:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        return b"".join(out)


def _split_field(line: bytes) -> tuple[bytes, bytes]:
    if not line or line[:1] in b" \t":
        raise HTTPRequestError("obsolete line folding")
    if b"\r" in line or b"\n" in line:
        raise HTTPRequestError("bare CR or LF in a header line")
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.match(name):
        raise HTTPRequestError("malformed header field name")
    value = value.strip(b" \t")
    if _BAD_VALUE.search(value):
        raise HTTPRequestError("control character in a header field value")
    return name, value


def _tokens(value: bytes) -> list[bytes]:
    out = []
    for item in value.split(b","):
        item = item.strip(b" \t")
        if not item:
            continue
        if not _TOKEN.match(item):
            raise HTTPRequestError("malformed Connection header")
        out.append(item.lower())
    return out


def _protocols(value: bytes) -> list[bytes]:
    """The protocol names of an ``Upgrade`` value (``name[/version]``, lower case); a
    malformed item is kept as is so that it never reads as ``websocket``."""
    return [item.strip(b" \t").lower() for item in value.split(b",") if item.strip(b" \t")]


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a request head (ending with CRLF CRLF) strictly; raise HTTPRequestError for
    anything that could be read another way by the upstream server."""
    if not head.endswith(b"\r\n\r\n"):
        raise HTTPRequestError("request head does not end with CRLF CRLF")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HTTPRequestError("bad request line")
    method, target, version = parts
    if not _TOKEN.match(method) or not _TARGET.match(target):
        raise HTTPRequestError("bad request line")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HTTPRequestError("bad request line: HTTP/1.1 or HTTP/1.0 expected")
    if len(lines) - 1 > MAX_FIELDS:
        raise HTTPRequestError("too many header fields", 431)
    req = RequestHead(method, target, version)
    connection: list[bytes] = []
    upgrade: list[bytes] = []
    hosts = 0
    raw: list[tuple[bytes, bytes, bytes]] = []
    for line in lines[1:]:
        name, value = _split_field(line)
        lname, norm = name.lower(), normalise_name(name)
        if _is_sensitive(norm):
            continue  # the gateway's to set, under any spelling
        if norm in _FRAMING and lname != norm:
            raise HTTPRequestError("framing header spelled with '_'")
        if lname == b"content-length":
            if req.content_length is not None or not _DIGITS.match(value):
                raise HTTPRequestError("bad or repeated Content-Length")
            req.content_length = int(value)
        elif lname == b"transfer-encoding":
            if req.chunked or value.lower() != b"chunked":
                raise HTTPRequestError("Transfer-Encoding other than one 'chunked'")
            req.chunked = True
        elif lname == b"connection":
            connection += _tokens(value)
        elif lname == b"upgrade":
            upgrade += _protocols(value)
        else:
            if lname == b"host":
                hosts += 1
            raw.append((name, value, norm))
    if req.chunked and req.content_length is not None:
        raise HTTPRequestError("both Content-Length and Transfer-Encoding")
    if req.chunked and version == b"HTTP/1.0":
        raise HTTPRequestError("Transfer-Encoding in an HTTP/1.0 request")
    if hosts > 1 or (hosts == 0 and version == b"HTTP/1.1"):
        raise HTTPRequestError("an HTTP/1.1 request needs exactly one Host")
    listed = set(connection) - {b"close", b"keep-alive"}
    if {normalise_name(n) for n in listed} & _FRAMING:
        raise HTTPRequestError("Connection lists a framing header")
    req.close = b"close" in connection or (
        version == b"HTTP/1.0" and b"keep-alive" not in connection
    )
    if b"upgrade" in connection:
        req.upgrade = tuple(upgrade)
    drop = _HOP_BY_HOP | {normalise_name(n) for n in listed}
    req.fields = [(n, v) for n, v, norm in raw if norm not in drop]
    return req


def parse_chunk_size(line: bytes) -> int:
    """The size of a chunk-size line (with its CRLF); extensions are checked and
    dropped."""
    if len(line) > MAX_CHUNK_LINE:
        raise HTTPRequestError("chunk-size line too long")
    m = _CHUNK_LINE.match(line)
    if m is None:
        raise HTTPRequestError("malformed chunk-size line")
    return int(m.group(1), 16)


def check_trailer_line(line: bytes) -> None:
    """Check one trailer field line (with its CRLF); trailers are never forwarded."""
    if not line.endswith(b"\r\n"):
        raise HTTPRequestError("trailer line without CRLF")
    _split_field(line[:-2])


@dataclass
class ResponseHead:
    """What the gateway needs of an upstream's answer to a WebSocket opening handshake:
    the status and how the body is framed (for a non-101 answer, relayed as is)."""

    status: int
    content_length: int | None = None
    chunked: bool = False
    #: for a 101: ``Upgrade: websocket`` and ``Connection`` listing ``upgrade``
    websocket: bool = False

    @property
    def bodyless(self) -> bool:
        return 100 <= self.status < 200 or self.status in (204, 304)


def parse_response_head(head: bytes) -> ResponseHead:
    """Parse an upstream response head (ending with CRLF CRLF) strictly; raise
    HTTPRequestError (status 502) for anything malformed or framed two ways."""

    def bad(why: str) -> HTTPRequestError:
        return HTTPRequestError(f"upstream response: {why}", 502)

    if not head.endswith(b"\r\n\r\n"):
        raise bad("head does not end with CRLF CRLF")
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if version != b"HTTP/1.1" or len(code) != 3 or not code.isdigit() or rest[3:4] not in b" ":
        raise bad("bad status line")
    if len(lines) - 1 > MAX_FIELDS:
        raise bad("too many header fields")
    resp = ResponseHead(int(code))
    upgrade: list[bytes] = []
    connection: list[bytes] = []
    try:
        for line in lines[1:]:
            name, value = _split_field(line)
            lname = name.lower()
            if lname == b"content-length":
                if resp.content_length is not None or not _DIGITS.match(value):
                    raise bad("bad or repeated Content-Length")
                resp.content_length = int(value)
            elif lname == b"transfer-encoding":
                if resp.chunked or value.lower() != b"chunked":
                    raise bad("Transfer-Encoding other than one 'chunked'")
                resp.chunked = True
            elif lname == b"upgrade":
                upgrade += _protocols(value)
            elif lname == b"connection":
                connection += _tokens(value)
    except HTTPRequestError as exc:
        if exc.status == 502:
            raise
        raise bad(str(exc)) from None
    if resp.chunked and resp.content_length is not None:
        raise bad("both Content-Length and Transfer-Encoding")
    resp.websocket = upgrade == [b"websocket"] and b"upgrade" in connection
    return resp
