"""The platform's HTTP API (FastAPI): CA, CRL, directory, enrollment, KMC and admin.

Errors are JSON ``{"error": <type>, "detail": <message>}``; never a stack trace.
Operators authenticate with ``Authorization: Bearer <credential>``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mstcrypt import __version__
from mstcrypt.apps.login.tokens import TokenError
from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import (
    DecodeError,
    KeyStoreError,
    MstCryptError,
    PolicyError,
    UnsupportedError,
    VerificationError,
)
from mstcrypt.kmc.service import Kmc, NotFoundError
from mstcrypt.pki import Profile
from mstcrypt.server.config import Settings

log = logging.getLogger("mstcrypt.server")

PEM = "application/x-pem-file"


class RateLimited(PolicyError):
    pass


class Unauthorized(PolicyError):
    pass


_STATUS: list[tuple[type[Exception], int]] = [
    (TokenError, 401),
    (NotFoundError, 404),
    (RateLimited, 429),
    (Unauthorized, 401),
    (VerificationError, 403),
    (DecodeError, 400),
    (UnsupportedError, 400),
    (PolicyError, 409),
    (KeyStoreError, 500),
    (MstCryptError, 400),
]


# ---------------------------------------------------------------- request models -------
class CodeRequest(BaseModel):
    owner: str = Field(min_length=1, max_length=128)
    subject: dict[str, str]
    profile: str = Profile.DEVICE_SIGN.value
    ttl_seconds: int = Field(default=86400, ge=60, le=30 * 86400)


class EnrollRequest(BaseModel):
    code: str = Field(min_length=4, max_length=64)
    csr: str = Field(min_length=16, max_length=16384, description="PEM PKCS#10 request")


class RevokeRequest(BaseModel):
    reason: str = "unspecified"


class OwnerRequest(BaseModel):
    owner: str = Field(min_length=1, max_length=128)


class DistributeRequest(BaseModel):
    terminal_public_key: str = Field(description="hex 04‖x‖y of the terminal signing key")
    subject: dict[str, str]


class RotateRequest(DistributeRequest):
    owner: str = Field(min_length=1, max_length=128)


class RecoveryCreate(BaseModel):
    key_id: str
    recipient_public_key: str = Field(description="hex 04‖x‖y of the new terminal's key")
    reason: str = Field(min_length=3, max_length=500)


class FileRecoveryCreate(BaseModel):
    escrow_stanza: str = Field(description="base64 DER SM2Cipher from the file's escrow stanza")
    recipient_public_key: str = Field(description="hex 04‖x‖y of the new terminal's enc key")
    reason: str = Field(min_length=3, max_length=500)


class GroupCreate(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    members: list[str]


class GroupChange(BaseModel):
    add: list[str] = []
    remove: list[str] = []


class LoginResponseBody(BaseModel):
    response: dict[str, Any]
    password: str | None = Field(default=None, max_length=256)


class PasswordBody(BaseModel):
    password: str = Field(min_length=8, max_length=256)


class BackupRequest(BaseModel):
    passphrase: str = Field(min_length=12, max_length=256)


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("credential required (Authorization: Bearer …)")
    return authorization[7:].strip()


def operator(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The authenticated operator: a session token from certificate login whose owner is
    a registered operator; or, when enabled, a static credential."""
    token = _bearer(authorization)
    settings = request.app.state.settings
    if token.startswith("MST1."):
        try:
            claims = request.app.state.login().verify_session(token)
        except VerificationError as exc:
            raise Unauthorized(f"session token refused: {exc}") from None
        owner = claims.get("owner")
        if not settings.is_certificate_operator(owner):
            raise Unauthorized("this user is not an operator")
        return f"{owner}"
    if not settings.static_operators:
        raise Unauthorized(
            "operators log in with their certificate (static credentials are disabled)"
        )
    name = settings.authenticate_operator(token)
    if name is None:
        raise Unauthorized("invalid operator credential")
    return str(name)


Operator = Annotated[str, Depends(operator)]


def _pub(hexstr: str) -> SM2PublicKey:
    try:
        raw = bytes.fromhex(hexstr)
    except ValueError:
        raise DecodeError("public key must be hex") from None
    return SM2PublicKey.from_bytes(raw)


# ---------------------------------------------------------------- application ----------
def create_app(settings: Settings, kmc: Kmc | None = None) -> FastAPI:
    """Build the app. ``kmc`` may be given (tests); otherwise it is built from settings."""
    if kmc is None:
        kmc = Kmc(settings.database(), settings.wrapper(), crl_base_url=settings.public_url)
        kmc.create_schema()
    service = kmc

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_checkpoints(service, settings.checkpoint_seconds))
        try:
            yield
        finally:
            task.cancel()
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
    login_holder: list[Any] = []

    def login() -> Any:
        """The login service, created on first use (it needs an initialised CA)."""
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

    app.state.login = login

    @app.exception_handler(MstCryptError)
    async def _typed(_req: Request, exc: MstCryptError) -> JSONResponse:
        status = next(code for cls, code in _STATUS if isinstance(exc, cls))
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)

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

    # -- public ----------------------------------------------------------------------
    @app.get("/health", tags=["public"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "ca": service.is_initialised()}

    @app.get("/ca/chain.pem", tags=["ca"], response_class=Response)
    def chain() -> Response:
        return Response(b"".join(c.pem for c in service.chain()), media_type=PEM)

    @app.get("/ca/{ca}.pem", tags=["ca"], response_class=Response)
    def ca_cert(ca: str) -> Response:
        certs = {"issuing": 0, "root": 1}
        if ca not in certs:
            raise NotFoundError(f"no CA named {ca!r}")
        return Response(service.chain()[certs[ca]].pem, media_type=PEM)

    @app.get("/crl/{ca}.crl", tags=["ca"], response_class=Response)
    def crl(ca: str) -> Response:
        if ca not in ("issuing", "root"):
            raise NotFoundError(f"no CA named {ca!r}")
        return Response(service.crl(ca), media_type="application/pkix-crl")

    @app.get("/directory/certificates/{serial}", tags=["directory"], response_class=Response)
    def cert_by_serial(serial: str) -> Response:
        cert = service.certificate(serial)
        return Response(
            cert.pem,
            media_type=PEM,
            headers={"X-Certificate-Status": service.certificate_status(serial)},
        )

    @app.get("/directory/certificates", tags=["directory"])
    def find(
        subject: str | None = None,
        owner: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        if not subject and not owner:
            raise PolicyError("give subject or owner")
        return [
            {
                "serial": f"{c.serial:x}",
                "subject": c.subject_str,
                "not_after": c.not_after.isoformat(),
                "pem": c.pem.decode(),
            }
            for c in service.find_certificates(subject=subject, owner=owner, limit=limit)
        ]

    @app.get(
        "/directory/encryption-certificate/{owner}", tags=["directory"], response_class=Response
    )
    def enc_cert(owner: str) -> Response:
        return Response(service.encryption_certificate(owner).pem, media_type=PEM)

    # -- enrollment ----------------------------------------------------------------------
    @app.post("/enroll", tags=["enrollment"])
    def enroll(body: EnrollRequest, request: Request) -> dict[str, Any]:
        source = request.client.host if request.client else "-"
        if not service.allow(f"enroll:{source}", limit=settings.enroll_rate):
            raise RateLimited("too many enrollment attempts from this address; retry later")
        e = service.enroll(body.code, body.csr.encode(), source=source)
        return {
            "owner": e.owner,
            "key_id": e.key_id,
            "sign_certificate": e.sign_certificate.pem.decode(),
            "encryption_certificate": e.encryption_certificate.pem.decode(),
            "enveloped_key": base64.b64encode(e.enveloped_key).decode(),
            "chain": [c.pem.decode() for c in e.chain],
        }

    @app.get("/kmc/kdk/{member}", tags=["kmc"])
    def kdk(member: str) -> dict[str, Any]:
        return service.kdk_delivery(member, actor=f"terminal:{member}")

    @app.get("/kmc/groups/{group}/key", tags=["kmc"])
    def group_key(group: str, member: str, version: int | None = None) -> dict[str, Any]:
        return service.group_key_for(group, member, version)

    # -- certificate login (§7.3) -------------------------------------------------------
    @app.get("/login/certificate.pem", tags=["login"], response_class=Response)
    def login_certificate() -> Response:
        return Response(login().certificate.pem, media_type=PEM)

    @app.post("/login/challenge", tags=["login"])
    def login_challenge(request: Request) -> dict[str, Any]:
        source = request.client.host if request.client else "-"
        return dict(login().challenge(source=source).to_json())

    @app.post("/login/response", tags=["login"])
    def login_response(body: LoginResponseBody, request: Request) -> dict[str, Any]:
        source = request.client.host if request.client else "-"
        r = login().respond(body.response, source=source, password=body.password)
        c = r["claims"]
        return {
            "session_token": r["session_token"],
            "subject": c["sub"],
            "owner": c["owner"],
            "expires": c["exp"],
            "amr": c["amr"],
        }

    @app.get("/login/session", tags=["login"])
    def login_session(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        return dict(login().verify_session(_bearer(authorization)))

    @app.post("/login/logout", tags=["login"])
    def logout(authorization: Annotated[str | None, Header()] = None) -> dict[str, str]:
        login().logout(_bearer(authorization))
        return {"status": "logged out"}

    @app.post("/admin/login-passwords/{owner}", tags=["admin"])
    def set_login_password(owner: str, body: PasswordBody, who: Operator) -> dict[str, str]:
        login().set_password(owner, body.password, actor=who)
        return {"owner": owner, "status": "password set"}

    # -- admin -------------------------------------------------------------------------
    @app.post("/admin/enrollment-codes", tags=["admin"])
    def new_code(body: CodeRequest, who: Operator) -> dict[str, Any]:
        code, expires = service.create_enrollment_code(
            owner=body.owner,
            subject=body.subject,
            profile=_profile(body.profile),
            ttl=timedelta(seconds=body.ttl_seconds),
            actor=who,
        )
        return {"code": code, "owner": body.owner, "expires_at": expires.isoformat()}

    @app.post("/admin/certificates/{serial}/revoke", tags=["admin"])
    def revoke_cert(serial: str, body: RevokeRequest, who: Operator) -> dict[str, str]:
        service.revoke_certificate(serial, reason=body.reason, actor=who)
        return {"serial": serial, "status": "revoked"}

    @app.get("/admin/keys", tags=["admin"])
    def list_keys(owner: str, who: Operator) -> list[dict[str, Any]]:
        return service.keys(owner)

    @app.post("/admin/keys", tags=["admin"])
    def generate_key(body: OwnerRequest, who: Operator) -> dict[str, str]:
        return {"key_id": service.generate_key(body.owner, actor=who)}

    @app.post("/admin/keys/{key_id}/distribute", tags=["admin"])
    def distribute(key_id: str, body: DistributeRequest, who: Operator) -> dict[str, Any]:
        env, cert = service.distribute_key(
            key_id, _pub(body.terminal_public_key), subject=body.subject, actor=who
        )
        return {
            "enveloped_key": base64.b64encode(env).decode(),
            "encryption_certificate": cert.pem.decode(),
        }

    @app.post("/admin/keys/rotate", tags=["admin"])
    def rotate(body: RotateRequest, who: Operator) -> dict[str, Any]:
        key_id, env, cert = service.rotate_key(
            body.owner, _pub(body.terminal_public_key), subject=body.subject, actor=who
        )
        return {
            "key_id": key_id,
            "enveloped_key": base64.b64encode(env).decode(),
            "encryption_certificate": cert.pem.decode(),
        }

    @app.post("/admin/keys/{key_id}/{op}", tags=["admin"])
    def key_op(
        key_id: str, op: str, who: Operator, body: RevokeRequest | None = None
    ) -> dict[str, str]:
        if op == "archive":
            service.archive_key(key_id, actor=who)
        elif op == "revoke":
            reason = body.reason if body and body.reason != "unspecified" else "key_compromise"
            service.revoke_key(key_id, reason=reason, actor=who)
        elif op == "destroy":
            service.destroy_key(key_id, actor=who)
        else:
            raise NotFoundError(f"unknown key operation {op!r}")
        return {"key_id": key_id, "operation": op, "status": "done"}

    @app.post("/admin/recovery", tags=["admin"])
    def recovery(body: RecoveryCreate, who: Operator) -> dict[str, str]:
        rid = service.request_recovery(
            body.key_id, _pub(body.recipient_public_key), reason=body.reason, actor=who
        )
        return {"request_id": rid, "status": "pending"}

    @app.get("/kmc/file-recovery-key.pem", tags=["kmc"], response_class=Response)
    def file_recovery_key() -> Response:
        from mstcrypt.formats.keys import dump_public_key

        return Response(dump_public_key(service.file_recovery_public_key()), media_type=PEM)

    @app.post("/admin/file-recovery", tags=["admin"])
    def file_recovery(body: FileRecoveryCreate, who: Operator) -> dict[str, str]:
        try:
            escrow = base64.b64decode(body.escrow_stanza, validate=True)
        except ValueError:
            raise DecodeError("escrow_stanza must be base64") from None
        rid = service.request_file_recovery(
            escrow, _pub(body.recipient_public_key), reason=body.reason, actor=who
        )
        return {"request_id": rid, "status": "pending"}

    @app.post("/admin/recovery/{request_id}/approve", tags=["admin"])
    def approve(request_id: str, who: Operator) -> dict[str, Any]:
        service.approve_recovery(request_id, actor=who)
        return service.recovery_result(request_id)

    @app.get("/admin/recovery/{request_id}", tags=["admin"])
    def recovery_status(request_id: str, who: Operator) -> dict[str, Any]:
        return service.recovery_result(request_id)

    @app.post("/admin/groups", tags=["admin"])
    def create_group(body: GroupCreate, who: Operator) -> dict[str, Any]:
        version = service.create_group(body.id, body.members, actor=who)
        return {"group": body.id, "version": version, "members": service.group_members(body.id)}

    @app.post("/admin/groups/{group}/members", tags=["admin"])
    def change_group(group: str, body: GroupChange, who: Operator) -> dict[str, Any]:
        version = service.change_group(group, add=body.add, remove=body.remove, actor=who)
        return {"group": group, "version": version, "members": service.group_members(group)}

    @app.post("/admin/backup", tags=["admin"], response_class=Response)
    def backup(body: BackupRequest, who: Operator) -> Response:
        return Response(
            service.backup(body.passphrase, actor=who), media_type="application/octet-stream"
        )

    @app.post("/admin/audit/checkpoint", tags=["admin"])
    def checkpoint(who: Operator) -> dict[str, Any]:
        return {"signed_seq": service.checkpoint()}

    @app.get("/admin/audit/verify", tags=["admin"])
    def verify_audit(who: Operator) -> dict[str, Any]:
        r = service.verify_audit()
        return {
            "ok": r.ok,
            "records": r.records,
            "checkpoints": r.checkpoints,
            "first_bad_seq": r.first_bad_seq,
            "problem": r.problem,
        }

    return app


def _profile(value: str) -> Profile:
    try:
        return Profile(value)
    except ValueError:
        raise PolicyError(f"unknown profile {value!r}") from None


async def _checkpoints(service: Kmc, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            if service.is_initialised():
                await asyncio.to_thread(service.checkpoint)
        except MstCryptError as exc:  # keep serving; the next round retries
            log.warning("audit checkpoint failed: %s", exc)
