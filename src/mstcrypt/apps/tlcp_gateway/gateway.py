"""The mobile access gateway (T/ZSA 37-2020 §6.4): TLCP from the terminal, plain TCP
to internal services.

Each listener requires a client certificate issued under the configured trust anchors
(checked against the CRLs of the last refresh), routes by SNI (or the listener's default
when no SNI is sent; an unknown name is refused with unrecognized_name), and either
forwards bytes unchanged in both directions (``tcp``) or acts as an HTTP/1.1 reverse proxy
that adds ``X-MST-Client-Subject`` and ``X-MST-Client-Serial`` to every request after
removing any such header sent by the terminal (``http``). An ``http`` route with
``websocket = true`` also relays a WebSocket opening handshake sent as a connection's
first request: after the upstream's 101 the connection is a byte pipe both ways, with
back-pressure (each write drained before the next read), half-close passed on and the
idle timeout kept (see :meth:`Gateway._websocket`).

The gateway keeps no state another instance needs (no session cache: every connection
is a full handshake, so revocation applies to every connection). One access log line per
connection goes to the ``mstcrypt.gateway.access`` logger: listener, peer, SNI, client
subject and serial, suite, upstream, result, bytes each way and duration — never keys or
application data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from mstcrypt.apps.tlcp_gateway.config import GatewayConfig, ListenerConfig, Route
from mstcrypt.apps.tlcp_gateway.http import (
    MAX_CHUNK_LINE,
    MAX_FIELDS,
    HTTPRequestError,
    RequestHead,
    ResponseHead,
    check_trailer_line,
    parse_chunk_size,
    parse_request_head,
    parse_response_head,
)
from mstcrypt.apps.tlcp_gateway.trust import (
    TrustMaterial,
    TrustSource,
    call_source,
    file_trust_source,
)
from mstcrypt.errors import PolicyError
from mstcrypt.pki import name_to_str
from mstcrypt.protocols.tlcp import (
    AlertDescription,
    ClientAuth,
    Credentials,
    TLCPContext,
    TLCPError,
    aio,
)

__all__ = ["SERIAL_HEADER", "SUBJECT_HEADER", "Gateway"]

log = logging.getLogger("mstcrypt.gateway")
access_log = logging.getLogger("mstcrypt.gateway.access")

SUBJECT_HEADER = "X-MST-Client-Subject"
SERIAL_HEADER = "X-MST-Client-Serial"
CHUNK = 65536
#: After the terminal ends its side of a WebSocket relay, how long the upstream may go
#: on sending (at most ``idle_timeout``).
HALF_CLOSE_LINGER = 30.0


class _Idle(Exception):
    pass


def _header_value(text: str) -> str:
    """Printable ASCII as is; anything else percent-encoded (UTF-8)."""
    return urllib.parse.quote(text, safe="".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25))


class _Conn:
    """Accounting of one terminal connection (for the access log)."""

    def __init__(self, listener: str, peer: Any) -> None:
        self.start = time.monotonic()
        self.fields: dict[str, Any] = {
            "listener": listener,
            "peer": f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer),
            "sni": "-",
            "subject": "-",
            "serial": "-",
            "suite": "-",
            "upstream": "-",
            "result": "ok",
        }
        self.bytes_in = 0  # terminal -> upstream
        self.bytes_out = 0  # upstream -> terminal
        self.last = time.monotonic()
        #: the stream buffers of this connection, for :meth:`Gateway.buffered_bytes`
        self.streams: list[Any] = []

    def buffered(self) -> int:
        total = 0
        for s in self.streams:
            if isinstance(s, asyncio.StreamWriter):
                total += s.transport.get_write_buffer_size()
            elif isinstance(s, asyncio.StreamReader):
                total += len(getattr(s, "_buffer", b""))  # no public size on StreamReader
        return total

    def line(self) -> str:
        f = dict(self.fields)
        f["in"] = self.bytes_in
        f["out"] = self.bytes_out
        f["ms"] = int((time.monotonic() - self.start) * 1000)
        return " ".join(f'{k}="{v}"' if " " in str(v) else f"{k}={v}" for k, v in f.items())


class Gateway:
    """Run with ``async with Gateway(config) as gw: await gw.serve_forever()`` or
    ``await gw.start()`` / ``await gw.close()``.

    ``credentials`` and ``trust_source`` override the configuration's ``credentials`` and
    ``trust`` sections (for example ``kmc_trust_source(kmc)``); ``refresh_interval``
    overrides ``trust.refresh_interval``. A trust source is needed unless every listener
    has ``client_auth = "none"``.

    Client certificates are checked against CRLs, and a certificate whose issuer has no
    CRL in the trust material is refused (``require_crl``, default true, from
    ``trust.require_crl`` or the argument). Turning that off is logged as a warning.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        credentials: Credentials | None = None,
        trust_source: TrustSource | None = None,
        refresh_interval: float | None = None,
        require_crl: bool | None = None,
    ) -> None:
        self.config = config
        if credentials is None:
            if config.credentials is None:
                raise PolicyError("the gateway needs credentials")
            credentials = config.credentials.load()
        self.credentials = credentials
        trust = config.trust
        authenticates = any(lc.client_auth is not ClientAuth.NONE for lc in config.listeners)
        if trust_source is None and trust is not None:
            trust_source = file_trust_source(
                trust.ca_files, trust.intermediate_files, trust.crl_files, trust.crl_urls
            )
        if trust_source is None and authenticates:
            raise PolicyError("the gateway needs a trust source (trust anchors and CRLs)")
        self.trust_source = trust_source
        self.refresh_interval = refresh_interval or (trust.refresh_interval if trust else 300.0)
        if require_crl is None:
            require_crl = trust.require_crl if trust is not None else True
        self.require_crl = require_crl
        if authenticates and not require_crl:
            log.warning(
                "require_crl is off: a client certificate whose issuer has no CRL is accepted "
                "without a revocation check"
            )
        self.trust: TrustMaterial | None = None
        self._contexts: dict[str, TLCPContext] = {}
        self._servers: list[tuple[ListenerConfig, asyncio.Server]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self.active = 0
        self.refresh_count = 0
        self._records: set[_Conn] = set()

    # --- trust ------------------------------------------------------------------------
    def _context(self, listener: ListenerConfig, trust: TrustMaterial | None) -> TLCPContext:
        def sni(host: str | None) -> Credentials | None:
            if listener.route_for(host) is None:
                raise TLCPError(
                    AlertDescription.UNRECOGNIZED_NAME,
                    "no route for this server name" if host else "server name required",
                )
            return None

        kw: dict[str, Any] = {}
        if listener.cipher_suites:
            kw["cipher_suites"] = listener.cipher_suites
        if trust is not None:
            kw.update(
                trust_anchors=trust.trust_anchors,
                intermediates=trust.intermediates,
                crls=trust.crls,
            )
        return TLCPContext.for_peer(
            listener.profile,
            credentials=self.credentials,
            require_crl=self.require_crl,
            client_auth=listener.client_auth,
            sni_callback=sni,
            **kw,
        )

    async def refresh_trust(self) -> TrustMaterial | None:
        """Fetch the trust material now and use it for new connections."""
        trust = None if self.trust_source is None else await call_source(self.trust_source)
        self._contexts = {lc.name: self._context(lc, trust) for lc in self.config.listeners}
        self.trust = trust
        self.refresh_count += 1
        return trust

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh_trust()
            except Exception as exc:  # keep the previous material
                log.warning("trust refresh failed (%s): keeping the previous CRLs", exc)

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh_trust()
        for lc in self.config.listeners:
            server = await asyncio.start_server(
                lambda r, w, lc=lc: self._spawn(lc, r, w), lc.host, lc.port
            )
            self._servers.append((lc, server))
            log.info("gateway listening on %s", self.addresses[-1])
        if self.trust_source is not None:
            self._refresher = asyncio.create_task(self._refresh_loop())

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of each listener, in configuration order."""
        return [s.sockets[0].getsockname()[:2] for _, s in self._servers]

    async def serve_forever(self) -> None:
        if not self._servers:
            await self.start()
        try:
            await asyncio.gather(*(s.serve_forever() for _, s in self._servers))
        finally:
            await self.close()

    def stop_accepting(self) -> None:
        """Close the listeners and stop refreshing trust; open connections go on."""
        self._closing = True
        if self._refresher is not None:
            self._refresher.cancel()
        for _, s in self._servers:
            s.close()

    def buffered_bytes(self) -> int:
        """Bytes held in the gateway's stream buffers right now, over all connections
        (TCP write buffers to terminals and upstreams, and read buffers): the figure
        back-pressure keeps bounded whatever the peers do."""
        return sum(rec.buffered() for rec in list(self._records))

    @property
    def connections(self) -> int:
        """Connections being handled (handshaking or relaying)."""
        return len(self._tasks)

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting, let open connections finish for ``grace`` seconds (default
        ``shutdown_grace``), then cut them."""
        if self._closed:
            return
        self._closed = True
        self.stop_accepting()
        grace = self.config.shutdown_grace if grace is None else grace
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for _, s in self._servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- connections ------------------------------------------------------------------
    def _spawn(
        self, lc: ListenerConfig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.create_task(self._handle(lc, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(
        self, lc: ListenerConfig, raw_r: asyncio.StreamReader, raw_w: asyncio.StreamWriter
    ) -> None:
        rec = _Conn(lc.name, raw_w.get_extra_info("peername"))
        if self._closing or self.active >= self.config.max_connections:
            rec.fields["result"] = "refused:shutting_down" if self._closing else "refused:busy"
            raw_w.close()
            access_log.info(rec.line())
            return
        self.active += 1
        self._records.add(rec)
        rec.streams += [raw_r, raw_w]
        writer: aio.TLCPStreamWriter | None = None
        up_w: asyncio.StreamWriter | None = None
        try:
            try:
                reader, writer = await aio.server_handshake(
                    raw_r,
                    raw_w,
                    self._contexts[lc.name],
                    timeout=self.config.handshake_timeout,
                    limit=self.config.max_header_bytes,
                )
            except TLCPError as exc:
                rec.fields["result"] = f"handshake_failed:{exc.alert.name.lower()}"
                return
            except TimeoutError:
                rec.fields["result"] = "handshake_failed:timeout"
                return
            sni = writer.get_extra_info("server_name")
            peer = writer.get_extra_info("peer_certificates")
            subject = serial = None
            if peer:
                subject, serial = name_to_str(peer[0].subject), f"{peer[0].serial:X}"
            rec.fields.update(
                sni=sni or "-",
                subject=subject or "-",
                serial=serial or "-",
                suite=writer.get_extra_info("cipher_suite").name,
            )
            route = lc.route_for(sni)
            assert route is not None  # the SNI callback refused unknown names
            rec.fields["upstream"] = route.upstream
            try:
                async with asyncio.timeout(self.config.connect_timeout):
                    up_r, up_w = await _open_upstream(route)
            except (OSError, TimeoutError) as exc:
                rec.fields["result"] = f"upstream_failed:{type(exc).__name__}"
                return
            rec.streams += [up_r, up_w]
            peername = raw_w.get_extra_info("peername")
            peer_host = peername[0] if isinstance(peername, tuple) else None
            added = _added_headers(subject, serial, peer_host)
            await self._relay(rec, route, reader, writer, up_r, up_w, added)
        except asyncio.CancelledError:
            rec.fields["result"] = "cut:shutdown"
            raise
        except Exception as exc:
            rec.fields["result"] = f"error:{type(exc).__name__}"
            log.debug("connection error", exc_info=True)
        finally:
            self.active -= 1
            self._records.discard(rec)
            if up_w is not None:
                up_w.close()
            if writer is not None:
                writer.close()
            else:
                raw_w.close()
            access_log.info(rec.line())

    async def _relay(
        self,
        rec: _Conn,
        route: Route,
        reader: aio.TLCPStreamReader,
        writer: aio.TLCPStreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        added: list[tuple[bytes, bytes]],
    ) -> None:
        # The upstream's bytes are piped to the terminal once the first request has gone
        # (at once in tcp mode); a WebSocket handshake reads the answer itself instead.
        go = asyncio.Event()

        async def downstream() -> None:
            await go.wait()
            await self._pipe(rec, up_r.read, writer, "out")

        down = asyncio.create_task(downstream())

        async def upstream() -> None:
            if route.mode != "http":
                go.set()
                await self._pipe(rec, reader.read, up_w, "in")
                return
            try:
                last = await self._http_requests(
                    rec, reader, writer, up_r, up_w, added, route.websocket, go
                )
            except HTTPRequestError as exc:
                down.cancel()
                if "status" not in rec.fields:  # no response head relayed yet
                    self._http_error(writer, exc.status)
                raise
            if last and go.is_set():  # Connection: close: let the response through, then end
                await down

        tasks = [asyncio.create_task(upstream()), down]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            # both may be done by now (a failing request cancels the downstream pipe):
            # the failure is the result, whichever task set() yields first
            failures = [t.exception() for t in done if not t.cancelled() and t.exception()]
            if failures:
                rec.fields["result"] = _result(failures[0])
        finally:
            for t in tasks:
                t.cancel()

    # --- WebSocket (RFC 6455) through an http route -----------------------------------
    async def _websocket(
        self,
        rec: _Conn,
        req: RequestHead,
        reader: aio.TLCPStreamReader,
        writer: aio.TLCPStreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        added: list[tuple[bytes, bytes]],
    ) -> None:
        """Forward a WebSocket opening handshake (with the gateway's identity headers),
        read the upstream's answer, relay it; after a 101 relay bytes both ways until
        either side closes. Any other answer is relayed as is and ends the connection."""
        rec.fields["upgrade"] = "websocket"
        up_w.write(req.encode(added, websocket=True))
        await up_w.drain()
        try:
            head = await self._read_idle(rec, lambda: up_r.readuntil(b"\r\n\r\n"))
        except asyncio.IncompleteReadError:
            raise HTTPRequestError("upstream closed before answering", 502) from None
        except asyncio.LimitOverrunError:
            raise HTTPRequestError("upstream response head too large", 502) from None
        resp = parse_response_head(head)
        if resp.status == 101 and not resp.websocket:
            raise HTTPRequestError("upstream switched to another protocol", 502)
        rec.fields["status"] = resp.status
        rec.bytes_out += len(head)
        writer.write(head)
        await writer.drain()
        if resp.status != 101:
            rec.fields["upgrade"] = "refused"
            await self._copy_response_body(rec, resp, up_r, writer)
            return
        await self._tunnel(rec, reader, writer, up_r, up_w)

    async def _tunnel(
        self,
        rec: _Conn,
        reader: aio.TLCPStreamReader,
        writer: aio.TLCPStreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
    ) -> None:
        """Bytes both ways after a 101, each direction waiting for the other end to take
        what it was given (``drain``): a slow reader stops the gateway reading from the
        writer, so buffers stay bounded. The terminal's end of stream is passed on as a
        TCP half-close upstream, and upstream data still flows to it until the upstream
        closes (only after a bare TCP end: after close_notify nothing more can be sent
        to the terminal), for at most ``HALF_CLOSE_LINGER`` seconds; the upstream's end
        of stream becomes close_notify to the terminal, which ends the connection."""
        conn = writer.get_extra_info("tlcp_connection")

        async def inbound() -> None:
            await self._pipe(rec, reader.read, up_w, "in")
            if up_w.can_write_eof():
                with contextlib.suppress(OSError, RuntimeError):
                    up_w.write_eof()

        t_in = asyncio.create_task(inbound())
        t_out = asyncio.create_task(self._pipe(rec, up_r.read, writer, "out"))
        try:
            done, _ = await asyncio.wait({t_in, t_out}, return_when=asyncio.FIRST_COMPLETED)
            if t_out in done or t_in.exception() is not None or conn.closed:
                rec.fields["closed_by"] = "upstream" if t_out in done else "terminal"
                for t in done:
                    if t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
                return
            rec.fields["closed_by"] = "terminal"
            try:
                async with asyncio.timeout(min(HALF_CLOSE_LINGER, self.config.idle_timeout)):
                    await t_out
            except TimeoutError:
                rec.fields["result"] = "half_close_timeout"
        finally:
            for t in (t_in, t_out):
                t.cancel()
            await asyncio.gather(t_in, t_out, return_exceptions=True)

    async def _copy_response_body(
        self,
        rec: _Conn,
        resp: ResponseHead,
        up_r: asyncio.StreamReader,
        writer: aio.TLCPStreamWriter,
    ) -> None:
        """The body of a refused upgrade, as framed by the upstream (then the connection
        ends)."""

        async def copy(n: int | None) -> None:
            while n is None or n > 0:
                want = CHUNK if n is None else min(n, CHUNK)
                data = await self._read_idle(rec, lambda want=want: up_r.read(want))
                if not data:
                    if n is None:
                        return
                    raise HTTPRequestError("upstream response truncated", 502)
                rec.last = time.monotonic()
                rec.bytes_out += len(data)
                writer.write(data)
                await writer.drain()
                if n is not None:
                    n -= len(data)

        malformed = HTTPRequestError("upstream chunked body malformed", 502)

        async def line() -> bytes:
            try:
                out = await self._read_idle(rec, lambda: up_r.readuntil(b"\r\n"))
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                raise malformed from None
            if len(out) > MAX_CHUNK_LINE:
                raise malformed
            rec.bytes_out += len(out)
            writer.write(out)
            return out

        if resp.bodyless:
            return
        if resp.chunked:
            while True:
                try:
                    size = parse_chunk_size(await line())
                except HTTPRequestError as exc:
                    raise malformed from exc
                if size == 0:
                    break
                await copy(size + 2)
            fields = 0
            while await line() != b"\r\n":
                fields += 1
                if fields > MAX_FIELDS:
                    raise HTTPRequestError("upstream trailers too large", 502)
            await writer.drain()
            return
        await copy(resp.content_length)

    async def _read_idle(self, rec: _Conn, read: Callable[[], Awaitable[bytes]]) -> bytes:
        idle = self.config.idle_timeout
        while True:
            try:
                async with asyncio.timeout(idle):
                    return await read()
            except TimeoutError:
                if time.monotonic() - rec.last >= idle:
                    raise _Idle() from None

    async def _pipe(
        self, rec: _Conn, read: Callable[[int], Awaitable[bytes]], dst: Any, direction: str
    ) -> None:
        while True:
            data = await self._read_idle(rec, lambda: read(CHUNK))
            if not data:
                return
            rec.last = time.monotonic()
            if direction == "in":
                rec.bytes_in += len(data)
            else:
                rec.bytes_out += len(data)
            dst.write(data)
            await dst.drain()

    # --- HTTP reverse proxy -----------------------------------------------------------
    async def _http_requests(
        self,
        rec: _Conn,
        reader: aio.TLCPStreamReader,
        writer: aio.TLCPStreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        added: list[tuple[bytes, bytes]],
        websocket: bool,
        go: asyncio.Event,
    ) -> bool:
        """Forward requests one by one, each re-framed (see :mod:`.http`) with the
        gateway's identity and forwarding headers ``added``. True when the last one asked
        to close the connection, False at the end of the terminal's stream.

        With ``websocket`` (the route allows it), a WebSocket opening handshake sent as
        the connection's first request is relayed (:meth:`_websocket`) and the connection
        then belongs to it; later on a connection, as everywhere else, the ``Upgrade`` is
        dropped and the request forwarded as a plain one. ``go`` is set before the first
        request goes upstream (the responses are then piped to the terminal)."""
        limit = self.config.max_header_bytes
        first = True
        while True:
            try:
                head = await self._read_idle(rec, lambda: reader.readuntil(b"\r\n\r\n"))
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    raise HTTPRequestError("truncated request head") from None
                return False
            except asyncio.LimitOverrunError:
                raise HTTPRequestError("request head too large", 431) from None
            if len(head) > limit:
                raise HTTPRequestError("request head too large", 431)
            rec.last = time.monotonic()
            req = parse_request_head(head)
            rec.bytes_in += len(head)
            if first and websocket and req.websocket:
                await self._websocket(rec, req, reader, writer, up_r, up_w, added)
                return True
            first = False
            go.set()
            up_w.write(req.encode(added))
            if req.chunked:
                await self._copy_chunked(rec, reader, up_w)
            elif req.content_length:
                await self._copy_exactly(rec, reader, up_w, req.content_length)
            await up_w.drain()
            if req.close:
                return True

    async def _copy_exactly(
        self, rec: _Conn, reader: aio.TLCPStreamReader, up_w: asyncio.StreamWriter, n: int
    ) -> None:
        while n > 0:
            want = min(n, CHUNK)
            data = await self._read_idle(rec, lambda want=want: reader.read(want))
            if not data:
                raise HTTPRequestError("truncated body")
            rec.last = time.monotonic()
            rec.bytes_in += len(data)
            n -= len(data)
            up_w.write(data)
            await up_w.drain()

    async def _read_line(self, rec: _Conn, reader: aio.TLCPStreamReader, limit: int) -> bytes:
        try:
            line = await self._read_idle(rec, lambda: reader.readuntil(b"\r\n"))
        except asyncio.IncompleteReadError:
            raise HTTPRequestError("truncated chunked body") from None
        except asyncio.LimitOverrunError:
            raise HTTPRequestError("line too long in a chunked body") from None
        if len(line) > limit:
            raise HTTPRequestError("line too long in a chunked body")
        rec.last = time.monotonic()
        rec.bytes_in += len(line)
        return line

    async def _copy_chunked(
        self, rec: _Conn, reader: aio.TLCPStreamReader, up_w: asyncio.StreamWriter
    ) -> None:
        """Re-emit the chunks with canonical size lines; read, check and drop the
        trailers (never forwarded)."""
        while True:
            size = parse_chunk_size(await self._read_line(rec, reader, MAX_CHUNK_LINE))
            if size == 0:
                break
            up_w.write(b"%X\r\n" % size)
            await self._copy_exactly(rec, reader, up_w, size)
            try:
                crlf = await self._read_idle(rec, lambda: reader.readexactly(2))
            except asyncio.IncompleteReadError:
                raise HTTPRequestError("truncated chunked body") from None
            if crlf != b"\r\n":
                raise HTTPRequestError("chunk data not followed by CRLF")
            up_w.write(b"\r\n")
        budget, fields = self.config.max_header_bytes, 0
        while (line := await self._read_line(rec, reader, budget)) != b"\r\n":
            check_trailer_line(line)
            budget -= len(line)
            fields += 1
            if fields > MAX_FIELDS or budget <= 0:
                raise HTTPRequestError("trailer section too large", 431)
        up_w.write(b"0\r\n\r\n")

    @staticmethod
    def _http_error(writer: aio.TLCPStreamWriter, status: int) -> None:
        reason = {
            400: "Bad Request",
            431: "Request Header Fields Too Large",
            502: "Bad Gateway",
        }.get(status, "Error")
        with contextlib.suppress(Exception):
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )


def _result(exc: BaseException) -> str:
    if isinstance(exc, _Idle):
        return "idle_timeout"
    if isinstance(exc, HTTPRequestError):
        kind = "bad_gateway" if exc.status == 502 else "bad_request"
        return f"{kind}:{str(exc).replace(' ', '_')}"
    if isinstance(exc, TLCPError):
        return f"tlcp_error:{exc.alert.name.lower()}"
    return f"error:{type(exc).__name__}"


async def _open_upstream(route: Route) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if route.unix_path is not None:
        return await asyncio.open_unix_connection(route.unix_path)
    reader, writer = await asyncio.open_connection(*route.address)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


def _added_headers(
    subject: str | None, serial: str | None, peer_host: str | None
) -> list[tuple[bytes, bytes]]:
    """The headers the gateway asserts: the client certificate's subject and serial (when
    the terminal presented one) and where the request came from."""
    out = []
    if subject is not None and serial is not None:
        out.append((SUBJECT_HEADER.encode(), _header_value(subject).encode()))
        out.append((SERIAL_HEADER.encode(), serial.encode()))
    if peer_host:
        out.append((b"X-Forwarded-For", peer_host.encode("ascii", "replace")))
    out.append((b"X-Forwarded-Proto", b"https"))
    return out
