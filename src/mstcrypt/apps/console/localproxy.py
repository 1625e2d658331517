"""The operator's side of the console when the platform speaks TLCP: browsers speak TLS,
not TLCP, so ``mstcrypt console open`` serves the console to the local browser on a
loopback port and forwards each request to the platform over TLCP (GM/T 0024), the
platform's certificate checked against the root preset in the operator's token.

Only ``/console`` paths are forwarded. The browser's ``Origin`` is its loopback origin;
the proxy, which is the browser's only way to the platform, replaces exactly that value
with the platform's origin so the console's same-origin check holds end to end, and
passes any other value unchanged (so a foreign page is still refused). Loopback is a
secure context for browsers, so the console's ``Secure`` ``__Host-`` cookie works.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from mstcrypt.errors import PolicyError

__all__ = ["LocalConsoleProxy"]

_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "accept-encoding",
}
_MAX_BODY = 1024 * 1024

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LocalConsoleProxy:
    """``with LocalConsoleProxy(upstream, http_client) as proxy: proxy.url`` — serves
    ``http://127.0.0.1:PORT/console…`` from ``upstream`` through ``http_client`` (an
    :class:`httpx.Client` with the TLCP transport)."""

    def __init__(self, upstream: str, http: httpx.Client, *, port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.http = http
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- ASGI --------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("raw_path") or scope["path"].encode()
        if b".." in path or not (path == b"/console" or path.startswith(b"/console/")):
            await _answer(send, 404, b"only the console is served here")
            return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > _MAX_BODY:
                await _answer(send, 413, b"request too large")
                return
        headers = []
        for k, v in scope["headers"]:
            name = k.decode("latin-1").lower()
            if name in _HOP:
                continue
            value = v.decode("latin-1")
            if name == "origin" and value == self.url:
                value = self.upstream
            headers.append((name, value))
        target = path.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        try:
            r = await asyncio.to_thread(self._forward, scope["method"], target, headers, body)
        except httpx.HTTPError as exc:
            await _answer(send, 502, f"platform unreachable: {type(exc).__name__}".encode())
            return
        out = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in r.headers.multi_items()
            if k.lower() not in _HOP and k.lower() != "content-encoding"
        ]
        out.append((b"content-length", str(len(r.content)).encode()))
        await send({"type": "http.response.start", "status": r.status_code, "headers": out})
        await send({"type": "http.response.body", "body": r.content})

    def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> httpx.Response:
        with self._lock:  # one TLCP connection at a time: console traffic is light
            return self.http.request(
                method,
                self.upstream + target,
                headers=headers,
                content=body,
                follow_redirects=False,
            )

    # -- running ------------------------------------------------------------------------
    def start(self) -> LocalConsoleProxy:
        import uvicorn

        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise PolicyError(f"the local console proxy could not listen on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C)."""
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass

    def __enter__(self) -> LocalConsoleProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _answer(send: Send, status: int, text: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(text)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": text})
