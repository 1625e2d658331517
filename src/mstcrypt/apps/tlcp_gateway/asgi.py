"""Serve an ASGI application (the platform's FastAPI app) over TLCP on a TCP port.

Design: uvicorn runs the application on a Unix socket in a fresh private directory
(mode 0700, so only this process can connect to it), and a :class:`Gateway` listener in
``http`` mode terminates TLCP on the TCP port and forwards each connection to that
socket. The application therefore gets everything the gateway's HTTP mode guarantees:

- requests re-framed strictly (no smuggling: see :mod:`.http`);
- ``X-MST-Client-Subject`` / ``X-MST-Client-Serial`` set from the verified client
  certificate when the terminal presented one (``client_auth`` ``optional``) and
  removed under every spelling otherwise — a terminal cannot forge them;
- ``X-Forwarded-For`` (the TCP peer) and ``X-Forwarded-Proto: https`` set by the
  gateway (client-sent forwarding headers removed); uvicorn, trusting only its private
  socket, turns them into the ASGI ``client`` and ``scheme``, so ``request.client.host``
  is the terminal's address and cannot be chosen by the terminal.

Why not drive uvicorn's protocol classes directly over the TLCP streams: they are
internal to uvicorn (transport and flow-control details change between releases); the
socket between the two is private and costs one local copy.

Shutdown (``close``): the TLCP listener stops accepting, uvicorn finishes the requests
in progress and closes idle keep-alive connections (which ends their TLCP relays), runs
the application's lifespan shutdown, and the private directory is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from mstcrypt.apps.tlcp_gateway.config import GatewayConfig, ListenerConfig, Route
from mstcrypt.apps.tlcp_gateway.gateway import Gateway
from mstcrypt.apps.tlcp_gateway.trust import TrustMaterial, TrustSource
from mstcrypt.errors import PolicyError
from mstcrypt.pki import CRL, Certificate
from mstcrypt.protocols.tlcp import CipherSuite, ClientAuth, Credentials

__all__ = ["ASGITLCPServer", "run_asgi_tlcp", "run_until_signal", "serve_asgi_tlcp"]

log = logging.getLogger("mstcrypt.gateway")

#: uvicorn settings this module owns (the private socket and the proxy-header trust).
_RESERVED = {"app", "host", "port", "uds", "fd", "ssl_keyfile", "ssl_certfile", "proxy_headers"}
_RESERVED |= {"forwarded_allow_ips", "lifespan_on", "workers", "reload"}


class ASGITLCPServer:
    """An ASGI application behind a TLCP listener.

    ``server_credentials``: the server's dual certificates and keys (for example
    ``Credentials.from_module(server_module, "tls")``, issued by the platform's own CA).
    ``client_auth``: ``none`` (default) or ``optional`` (a terminal may present a
    certificate; the application sees it as ``X-MST-Client-*``) or ``required``. Client
    certificates are validated against ``trust_source`` (refreshed every
    ``refresh_interval`` seconds), or the static ``trust_anchors`` / ``intermediates`` /
    ``crls``; ``require_crl`` (default true) refuses a certificate whose issuer has no
    CRL. ``uvicorn_options`` go to :class:`uvicorn.Config` (``log_level``,
    ``access_log``, ``timeout_keep_alive``, ``limit_concurrency``…). ``websocket``
    (default false) lets the application's WebSocket routes be reached over TLCP (the
    gateway's ``websocket = true`` route setting).
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 8443,
        server_credentials: Credentials,
        client_auth: ClientAuth | str = ClientAuth.NONE,
        trust_source: TrustSource | None = None,
        trust_anchors: Sequence[Certificate] = (),
        intermediates: Sequence[Certificate] = (),
        crls: Sequence[CRL] = (),
        require_crl: bool = True,
        refresh_interval: float = 300.0,
        cipher_suites: Sequence[CipherSuite] | None = None,
        max_connections: int = 1000,
        idle_timeout: float = 120.0,
        handshake_timeout: float = 30.0,
        shutdown_grace: float = 10.0,
        max_header_bytes: int = 65536,
        uvicorn_options: dict[str, Any] | None = None,
        websocket: bool = False,
    ) -> None:
        if not isinstance(server_credentials, Credentials):
            raise PolicyError("server_credentials must be Credentials")
        client_auth = ClientAuth(client_auth)
        if trust_source is None and trust_anchors:
            material = TrustMaterial(tuple(trust_anchors), tuple(intermediates), tuple(crls))
            trust_source = lambda: material  # noqa: E731 - a constant source
        if client_auth is not ClientAuth.NONE and trust_source is None:
            raise PolicyError("client authentication needs trust_anchors or a trust_source")
        options = dict(uvicorn_options or {})
        bad = set(options) & _RESERVED
        if bad:
            raise PolicyError(f"uvicorn options set by serve_asgi_tlcp: {', '.join(sorted(bad))}")
        self.app = app
        self._options = options
        self._listener = ListenerConfig(
            port=port,
            host=host,
            default=Route("unix:/placeholder", "http", websocket),
            match_any_name=True,
            client_auth=client_auth,
            cipher_suites=tuple(cipher_suites) if cipher_suites else None,
            name="asgi",
        )
        self._gw_settings = {
            "max_connections": max_connections,
            "idle_timeout": idle_timeout,
            "handshake_timeout": handshake_timeout,
            "shutdown_grace": shutdown_grace,
            "max_header_bytes": max_header_bytes,
        }
        self._credentials = server_credentials
        self._trust_source = trust_source
        self._require_crl = require_crl
        self._refresh_interval = refresh_interval
        self._dir: str | None = None
        self._uvicorn: Any = None
        self._main_loop: asyncio.Task[None] | None = None
        self.gateway: Gateway | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound TLCP (host, port)."""
        if self.gateway is None:
            raise PolicyError("the server is not started")
        return self.gateway.addresses

    async def start(self) -> None:
        import uvicorn

        self._dir = tempfile.mkdtemp(prefix="mstcrypt-asgi-")
        os.chmod(self._dir, 0o700)
        path = os.path.join(self._dir, "app.sock")
        options = {"log_config": None, "access_log": False, "timeout_keep_alive": 75}
        options.update(self._options)
        config = uvicorn.Config(
            self.app,
            uds=path,
            proxy_headers=True,
            forwarded_allow_ips="*",  # only this process can reach the private socket
            timeout_graceful_shutdown=self._gw_settings["shutdown_grace"],
            **options,
        )
        server = uvicorn.Server(config)
        try:
            config.load()
            server.lifespan = config.lifespan_class(config)
            try:
                await server.startup()
            except SystemExit:
                raise PolicyError("the ASGI application failed to start (lifespan)") from None
            self._uvicorn = server
            self._main_loop = asyncio.create_task(server.main_loop())
            assert self._listener.default is not None
            route = dataclasses.replace(self._listener.default, upstream=f"unix:{path}")
            listener = dataclasses.replace(self._listener, default=route)
            gw_config = GatewayConfig(listeners=[listener], **self._gw_settings)
            self.gateway = Gateway(
                gw_config,
                credentials=self._credentials,
                trust_source=self._trust_source,
                refresh_interval=self._refresh_interval,
                require_crl=self._require_crl,
            )
            await self.gateway.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Graceful shutdown: stop accepting, finish the requests in progress (up to
        ``shutdown_grace`` seconds), run the lifespan shutdown, remove the socket."""
        gw, server = self.gateway, self._uvicorn
        closing = None
        if gw is not None:
            gw.stop_accepting()
            closing = asyncio.create_task(gw.close())
        if server is not None:
            server.should_exit = True
            if self._main_loop is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._main_loop
            await server.shutdown()
            self._uvicorn = None
        if closing is not None:
            await closing
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def serve_forever(self) -> None:
        """Serve until cancelled, then shut down gracefully."""
        if self.gateway is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.close())

    async def __aenter__(self) -> ASGITLCPServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_asgi_tlcp(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8443,
    server_credentials: Credentials,
    client_auth: ClientAuth | str = ClientAuth.NONE,
    ready: Callable[[list[tuple[str, int]]], None] | None = None,
    **options: Any,
) -> None:
    """Serve ``app`` over TLCP on ``host:port`` until cancelled (then shut down
    gracefully). ``ready(addresses)`` is called once listening. Other keyword arguments
    are those of :class:`ASGITLCPServer`."""
    server = ASGITLCPServer(
        app,
        host=host,
        port=port,
        server_credentials=server_credentials,
        client_auth=client_auth,
        **options,
    )
    await server.start()
    if ready is not None:
        ready(server.addresses)
    await server.serve_forever()


def run_until_signal(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` in a new event loop until it is done or until SIGINT/SIGTERM, which
    cancel it (a graceful close, for the servers here)."""

    async def main() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # not available off the main thread (RuntimeError) or on Windows
            # (NotImplementedError): Ctrl-C then ends the loop the default way
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())


def run_asgi_tlcp(app: Any, **kwargs: Any) -> None:
    """Blocking :func:`serve_asgi_tlcp` for the command line: runs until SIGINT or
    SIGTERM, then shuts down gracefully."""
    run_until_signal(serve_asgi_tlcp(app, **kwargs))
