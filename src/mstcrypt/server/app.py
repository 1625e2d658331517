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
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mstcrypt import __version__
from mstcrypt.errors import MstCryptError
from mstcrypt.kmc.service import Kmc
from mstcrypt.server.caworkers import CaWorkers
from mstcrypt.server.config import Settings
from mstcrypt.server.errors import status_of
from mstcrypt.server.routers import (
    admin,
    appsign,
    console,
    enroll,
    login,
    ocsp,
    public,
    seal,
    terminal,
    voice,
)
from mstcrypt.server.routers import boot as boot_routes

__all__ = ["create_app", "housekeeping_round"]

log = logging.getLogger("mstcrypt.server")


def create_app(settings: Settings, kmc: Kmc | None = None) -> FastAPI:
    """Build the app. ``kmc`` may be given (tests); otherwise it is built from settings."""
    if kmc is None:
        kmc = settings.kmc()
        kmc.create_schema()
    service = kmc
    ca_ops = settings.ca_operations(kmc)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if isinstance(ca_ops, CaWorkers):  # opened now: a broken set-up fails at start
            await asyncio.to_thread(ca_ops.start)
        task = asyncio.create_task(_housekeeping(_app, service, settings))
        service.db.start_checkpointer()  # SQLite: WAL checkpoints off the commit path
        if settings.crl_publisher:  # one publishes at a time across instances (lease)
            service.crl_publisher.start()
        try:
            yield
        finally:
            task.cancel()
            await asyncio.to_thread(ca_ops.close)
            await asyncio.to_thread(service.crl_publisher.stop)
            await asyncio.to_thread(service.db.stop_checkpointer)
            with contextlib.suppress(MstCryptError, SQLAlchemyError):
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
    app.state.ca = ca_ops
    service.ocsp.validity = timedelta(seconds=settings.ocsp_validity)
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
    app.include_router(ocsp.router)
    app.include_router(enroll.router)
    app.include_router(login.router)
    app.include_router(terminal.router)
    app.include_router(voice.router)
    for router in admin.routers:
        app.include_router(router)
    app.include_router(seal.router)
    app.include_router(appsign.router)
    app.include_router(boot_routes.router)
    app.include_router(console.router)
    return app


def housekeeping_round(
    app: FastAPI, service: Kmc, settings: Settings, *, purge: bool
) -> dict[str, Any]:
    """One round of housekeeping, in the calling thread: a signed audit checkpoint when
    one is due (the records since the last one are verified first, on a snapshot), and,
    with ``purge``, OCSP responses signed ahead and the purge of expired login rows in
    short bounded batches. Returns what was done."""
    from mstcrypt.apps.login.service import LoginPolicy, purge_expired

    done: dict[str, Any] = {}
    if service.is_initialised():
        done["checkpoint"] = service.audit.checkpoint_if_due(
            every_records=settings.checkpoint_records,
            every_seconds=settings.checkpoint_seconds,
        )
    if purge and service.is_initialised():
        try:  # OCSP responses signed ahead; a failure never stops the rest
            done["ocsp_presigned"] = service.ocsp.presign()
        except SQLAlchemyError as exc:
            log.warning("OCSP presigning failed: %s", type(exc).__name__)
    if purge:
        policy = (
            app.state.login().policy
            if app.state.login_started()
            else LoginPolicy(session_ttl=settings.session_ttl)
        )
        done["purged"] = purge_expired(
            service.db,
            now=int(time.time()),
            challenge_ttl=policy.challenge_ttl,
            failure_window=policy.failure_window,
            batch=policy.purge_batch,
            max_batches=PURGE_MAX_BATCHES,
        )
    return done


#: batches per table and round: a backlog drains at up to this many batches a round
PURGE_MAX_BATCHES = 100


async def _housekeeping(app: FastAPI, service: Kmc, settings: Settings) -> None:
    """Every ``housekeeping_seconds`` (or the shorter checkpoint period): a signed
    audit checkpoint when due; every ``purge_seconds``: the purge of expired login rows."""
    tick = max(0.05, min(settings.housekeeping_seconds, settings.checkpoint_seconds))
    last_purge = time.monotonic()
    while True:
        await asyncio.sleep(tick)
        purge = time.monotonic() - last_purge >= settings.purge_seconds
        if purge:
            last_purge = time.monotonic()
        try:
            await asyncio.to_thread(housekeeping_round, app, service, settings, purge=purge)
        except MstCryptError as exc:  # keep serving; the next round retries
            log.warning("housekeeping failed: %s: %s", type(exc).__name__, exc)
        except SQLAlchemyError as exc:  # (no statement or parameters in the log)
            log.warning("housekeeping failed: %s", type(exc).__name__)
