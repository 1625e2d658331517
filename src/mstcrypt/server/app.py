"""The platform's HTTP API (FastAPI): state, error handlers, lifespan, and the routers
of :mod:`mstcrypt.server.routers` — nothing else.

Errors are JSON ``{"error": <type>, "detail": <message>}``; never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mstcrypt import __version__
from mstcrypt.errors import MstCryptError, PolicyError
from mstcrypt.kmc.service import Kmc
from mstcrypt.server.config import Settings
from mstcrypt.server.errors import status_of
from mstcrypt.server.routers import admin, enroll, login, public, terminal

__all__ = ["create_app"]

log = logging.getLogger("mstcrypt.server")


def create_app(settings: Settings, kmc: Kmc | None = None) -> FastAPI:
    """Build the app. ``kmc`` may be given (tests); otherwise it is built from settings."""
    if kmc is None:
        kmc = settings.kmc()
        kmc.create_schema()
    service = kmc

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_housekeeping(_app, service, settings.checkpoint_seconds))
        if settings.crl_publisher:  # one publishes at a time across instances (lease)
            service.crl_publisher.start()
        try:
            yield
        finally:
            task.cancel()
            await asyncio.to_thread(service.crl_publisher.stop)
            with contextlib.suppress(MstCryptError):
                if service.is_initialised():
                    service.checkpoint()  # sign the head on shutdown

    app = FastAPI(
        title="mstcrypt platform",
        version=__version__,
        lifespan=lifespan,
        description="CA, CRL, directory, enrollment and key management (T/ZSA "
        "37-2020) on SM2/SM3/SM4.",
    )
    app.state.kmc = service
    app.state.settings = settings
    app.state.trusted_proxies = [ipaddress.ip_network(p) for p in settings.trusted_proxies]
    login_holder: list[Any] = []
    login_lock = threading.Lock()

    def login_service() -> Any:
        """The login service, created on first use (it needs an initialised CA)."""
        with login_lock:
            if not login_holder:
                from mstcrypt.apps.login.service import LoginPolicy, LoginService

                login_holder.append(
                    LoginService(
                        service,
                        server_name=settings.login_server_name,
                        policy=LoginPolicy(session_ttl=settings.session_ttl),
                    )
                )
            return login_holder[0]

    app.state.login = login_service
    app.state.login_started = lambda: bool(login_holder)

    @app.exception_handler(MstCryptError)
    async def _typed(_req: Request, exc: MstCryptError) -> JSONResponse:
        return JSONResponse(
            {"error": type(exc).__name__, "detail": str(exc)}, status_code=status_of(exc)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        ]
        return JSONResponse(
            {"error": "ValidationError", "detail": "; ".join(problems)}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        names = {404: "NotFound", 405: "MethodNotAllowed"}
        return JSONResponse(
            {"error": names.get(exc.status_code, "HTTPError"), "detail": str(exc.detail)},
            status_code=exc.status_code,
        )

    @app.exception_handler(DataError)
    async def _data(_req: Request, exc: DataError) -> JSONResponse:
        # e.g. a NUL character that PostgreSQL cannot store: bad input, not a crash
        return JSONResponse(
            {
                "error": "DecodeError",
                "detail": "the request contains characters or values the store cannot accept",
            },
            status_code=400,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s", type(exc).__name__)
        return JSONResponse({"error": "InternalError", "detail": "internal error"}, status_code=500)

    app.include_router(public.router)
    app.include_router(enroll.router)
    app.include_router(login.router)
    app.include_router(terminal.router)
    for router in admin.routers:
        app.include_router(router)
    return app


async def _housekeeping(app: FastAPI, service: Kmc, every: float) -> None:
    """Signed audit checkpoints and the purge of expired login rows, every ``every`` s."""
    while True:
        await asyncio.sleep(every)
        try:
            if service.is_initialised():
                await asyncio.to_thread(service.checkpoint)
                if app.state.login_started():
                    await asyncio.to_thread(app.state.login().purge)
        except (MstCryptError, PolicyError) as exc:  # keep serving; the next round retries
            log.warning("housekeeping failed: %s", exc)
