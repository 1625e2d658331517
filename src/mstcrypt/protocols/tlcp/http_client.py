"""HTTP/1.1 over TLCP for httpx: a transport whose ``https`` connections are TLCP.

::

    transport = tlcp_transport(anchors=[root_der], server_name="kmc.example.com")
    with httpx.Client(transport=transport, base_url="https://kmc.example.com:8443") as http:
        http.get("/health")

The transport is httpcore's connection pool (keep-alive, connection reuse, limits) over a
network backend of this module: ``connect_tcp`` opens the TCP connection and the https
``start_tls`` step runs a TLCP client handshake (:class:`~mstcrypt.protocols.tlcp.sync.
TLCPSocket`) instead of TLS. The server's signing and encryption certificates are
validated against the given trust anchors (and CRLs), its signing certificate must match
the expected server name (``server_name``, else the URL's host, also sent as SNI unless it
is an IP literal) and, when ``pinned`` is given, must be one of the pinned certificates.
Client authentication is optional (``client_credentials``, for example
``Credentials.from_module(token, "tls")``).

Plain ``http://`` URLs are refused (:class:`~mstcrypt.errors.PolicyError`): through this
transport nothing travels in clear. A failed handshake raises
:class:`~mstcrypt.protocols.tlcp.TLCPError` (its ``alert`` says why); network failures and
timeouts are the usual httpx exceptions (``httpx.ConnectError``, ``httpx.ReadTimeout``...).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import typing
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import httpcore
import httpx

from mstcrypt.errors import PolicyError
from mstcrypt.pki import Certificate, load_certificates
from mstcrypt.protocols.tlcp.client import TLCPClient
from mstcrypt.protocols.tlcp.constants import AlertDescription, CipherSuite
from mstcrypt.protocols.tlcp.context import Credentials, TLCPContext
from mstcrypt.protocols.tlcp.errors import TLCPError
from mstcrypt.protocols.tlcp.sync import TLCPSocket

__all__ = ["TLCPNetworkBackend", "TLCPTransport", "tlcp_transport"]

DEFAULT_HANDSHAKE_TIMEOUT = 30.0


def _certificate(value: Certificate | bytes | str) -> Certificate:
    if isinstance(value, Certificate):
        return value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        if data.lstrip().startswith(b"-----BEGIN"):
            certs = load_certificates(data)
            if len(certs) != 1:
                raise PolicyError("a PEM trust anchor must hold exactly one certificate")
            return certs[0]
        return Certificate.from_der(data)
    raise PolicyError("certificates must be Certificate objects, DER or PEM bytes")


def _pin(value: Certificate | bytes | str) -> str:
    """A pinned certificate as its SM3 fingerprint (lower-case hex)."""
    if isinstance(value, str) and all(c in "0123456789abcdefABCDEF:" for c in value):
        fp = value.replace(":", "").lower()
        if len(fp) != 64:
            raise PolicyError("a pinned fingerprint is the 64-hex-digit SM3 of the certificate")
        return fp
    return _certificate(value).fingerprint


class _TLCPStream(httpcore.NetworkStream):
    """Application data of one TLCP connection, for httpcore."""

    def __init__(self, tls: TLCPSocket) -> None:
        self._tls = tls

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            self._tls.sock.settimeout(timeout)
            return self._tls.recv(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc) or "read timed out") from None
        except OSError as exc:
            raise httpcore.ReadError(f"TLCP read failed ({type(exc).__name__})") from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._tls.sock.settimeout(timeout)
            self._tls.sendall(buffer)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc) or "write timed out") from None
        except OSError as exc:
            raise httpcore.WriteError(f"TLCP write failed ({type(exc).__name__})") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._tls.sock.settimeout(1.0)
        self._tls.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        raise PolicyError("TLCP inside TLCP (an https proxy) is not supported")

    def get_extra_info(self, info: str) -> Any:
        tls = self._tls
        if info == "is_readable":
            # Idle in the pool and readable: the server closed (or sent something it
            # should not have): httpcore then drops the connection instead of reusing it.
            return tls.buffered > 0 or _readable(tls.sock)
        if info == "peer_certificates":
            return tls.conn.peer_certificates
        if info == "cipher_suite":
            return tls.conn.cipher_suite
        if info == "server_name":
            return tls.conn.server_name
        if info == "socket":
            return tls.sock
        if info == "client_addr":
            return tls.sock.getsockname()
        if info == "server_addr":
            return tls.sock.getpeername()
        return None


class _TCPStream(httpcore.NetworkStream):
    """A connected TCP socket that only becomes usable through :meth:`start_tls`."""

    def __init__(self, sock: socket.socket, backend: TLCPNetworkBackend) -> None:
        self._sock = sock
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        raise PolicyError("plain HTTP is refused: use an https:// URL (TLCP)")

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        raise PolicyError("plain HTTP is refused: use an https:// URL (TLCP)")

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        """Run the TLCP handshake (``ssl_context`` is httpcore's and is not used)."""
        return self._backend._handshake(self._sock, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._sock
        return None


def _readable(sock: socket.socket) -> bool:
    try:
        if hasattr(select, "poll"):
            p = select.poll()
            p.register(sock, select.POLLIN)
            return bool(p.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True  # a closed socket: not reusable


class TLCPNetworkBackend(httpcore.NetworkBackend):
    """httpcore network backend: TCP connections whose TLS step is a TLCP handshake with
    ``context``. ``server_name`` (when given) replaces the URL's host as the SNI and the
    name checked in the server's certificate; ``pinned`` holds SM3 fingerprints of the
    acceptable server signing certificates (empty: any certificate valid under the
    anchors)."""

    def __init__(
        self,
        context: TLCPContext,
        *,
        server_name: str | None = None,
        pinned: Iterable[str] = (),
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        if not isinstance(context, TLCPContext):
            raise PolicyError("TLCPNetworkBackend needs a TLCPContext")
        if not context.trust_anchors:
            raise PolicyError("the TLCP client needs trust anchors to verify the server")
        self.context = context
        self.server_name = server_name
        self.pinned = frozenset(pinned)
        self.handshake_timeout = handshake_timeout

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        source = None if local_address is None else (local_address, 0)
        try:
            sock = socket.create_connection((host, port), timeout, source_address=source)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"TCP connect to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"TCP connect to {host}:{port} failed: {exc}") from None
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            raise
        return _TCPStream(sock, self)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise PolicyError("the TLCP transport connects over TCP only")

    def _handshake(
        self, sock: socket.socket, server_hostname: str | None, timeout: float | None
    ) -> _TLCPStream:
        name = self.server_name or server_hostname
        if timeout is None:
            timeout = self.handshake_timeout
        try:
            client = TLCPClient(self.context, server_name=name)
            tls = TLCPSocket(sock, client)
            sock.settimeout(timeout)
            hs = tls.do_handshake()
        except TLCPError:
            sock.close()
            raise
        except TimeoutError:
            sock.close()
            raise httpcore.ConnectTimeout(
                f"TLCP handshake did not complete in {timeout} s"
            ) from None
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(
                f"TLCP handshake failed: the transport broke ({type(exc).__name__})"
            ) from None
        except BaseException:
            sock.close()
            raise
        if self.pinned and hs.peer_certificates[0].fingerprint not in self.pinned:
            tls.close()
            raise TLCPError(
                AlertDescription.BAD_CERTIFICATE,
                "the server's signing certificate is not one of the pinned certificates",
            )
        return _TLCPStream(tls)

    def sleep(self, seconds: float) -> None:
        import time

        time.sleep(seconds)


_HTTPCORE_TO_HTTPX: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextlib.contextmanager
def _map_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except httpcore.TimeoutException as exc:
        raise _translate(exc, request) from None
    except httpcore.NetworkError as exc:
        raise _translate(exc, request) from None
    except httpcore.ProtocolError as exc:
        raise _translate(exc, request) from None
    except httpcore.UnsupportedProtocol as exc:
        raise _translate(exc, request) from None


def _translate(exc: Exception, request: httpx.Request) -> Exception:
    for core, mapped in _HTTPCORE_TO_HTTPX:
        if isinstance(exc, core):
            return mapped(str(exc), request=request)
    return httpx.TransportError(str(exc), request=request)  # pragma: no cover


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _map_errors(self._request):
            yield from self._stream

    def close(self) -> None:
        closer = getattr(self._stream, "close", None)
        if closer is not None:
            with _map_errors(self._request):
                closer()


class TLCPTransport(httpx.BaseTransport):
    """An httpx transport speaking HTTP/1.1 over TLCP, with a connection pool
    (``limits``: at most ``max_connections``, keep-alive ``keepalive_expiry``)."""

    def __init__(
        self,
        backend: TLCPNetworkBackend,
        *,
        limits: httpx.Limits | None = None,
        retries: int = 0,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=20, max_keepalive_connections=10)
        self.backend = backend
        # httpcore wants an SSLContext for https origins (it sets ALPN on it); the TLCP
        # handshake never uses it.
        placeholder = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._pool = httpcore.ConnectionPool(
            ssl_context=placeholder,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            retries=retries,
            network_backend=backend,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https":
            raise PolicyError(
                f"refusing {request.url.scheme}:// through the TLCP transport: use https://"
            )
        assert isinstance(request.stream, httpx.SyncByteStream)
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _map_errors(request):
            resp = self._pool.handle_request(req)
        assert isinstance(resp.stream, Iterable)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_ResponseStream(resp.stream, request),
            extensions=resp.extensions,
        )

    @property
    def connections(self) -> int:
        """Open connections in the pool (for monitoring and tests)."""
        return len(self._pool.connections)

    def close(self) -> None:
        self._pool.close()


def tlcp_transport(
    *,
    anchors: Sequence[Certificate | bytes | str] = (),
    server_name: str | None = None,
    client_credentials: Credentials | None = None,
    pinned: Sequence[Certificate | bytes | str] = (),
    intermediates: Sequence[Certificate | bytes | str] = (),
    crls: Sequence[Any] = (),
    require_crl: bool = False,
    cipher_suites: Sequence[CipherSuite | int] | None = None,
    context: TLCPContext | None = None,
    limits: httpx.Limits | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
) -> TLCPTransport:
    """An httpx transport over TLCP.

    - ``anchors``: the trust anchors (Certificate, DER or PEM) the server's certificates
      must chain to: the CA root preset in the terminal, never one fetched from the server;
    - ``server_name``: the name the server's signing certificate must match (also sent as
      SNI); default: each request URL's host;
    - ``client_credentials``: for client authentication (and the ECDHE suites);
    - ``pinned``: certificates (or their SM3 fingerprints, hex) one of which the server's
      signing certificate must be;
    - ``intermediates``, ``crls``, ``require_crl``, ``cipher_suites``: as in
      :class:`TLCPContext`; ``context`` replaces all of these with a ready context.
    """
    if context is None:
        kw: dict[str, Any] = {}
        if cipher_suites is not None:
            kw["cipher_suites"] = cipher_suites
        context = TLCPContext(
            credentials=client_credentials,
            trust_anchors=[_certificate(a) for a in anchors],
            intermediates=[_certificate(c) for c in intermediates],
            crls=crls,
            require_crl=require_crl,
            **kw,
        )
    elif anchors or client_credentials or intermediates or crls or cipher_suites:
        raise PolicyError("give either a context or anchors/credentials/CRLs, not both")
    backend = TLCPNetworkBackend(
        context,
        server_name=server_name,
        pinned=[_pin(p) for p in pinned],
        handshake_timeout=handshake_timeout,
    )
    return TLCPTransport(backend, limits=limits)
