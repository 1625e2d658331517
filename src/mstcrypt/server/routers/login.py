"""Certificate login (§7.3): challenge and response are open to anybody (the response
is the authentication); the session routes take the session token they ask about."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from mstcrypt.server.deps import Bearer, LoginDep, Session, Source
from mstcrypt.server.routers.public import PEM
from mstcrypt.server.schemas import LoginResponseBody

router = APIRouter(prefix="/login", tags=["login"])


@router.get("/certificate.pem", response_class=Response)
def certificate(login: LoginDep) -> Response:
    return Response(login.certificate.pem, media_type=PEM)


@router.post("/challenge")
def challenge(login: LoginDep, source: Source) -> dict[str, Any]:
    return dict(login.challenge(source=source).to_json())


@router.post("/response")
def response(body: LoginResponseBody, login: LoginDep, source: Source) -> dict[str, Any]:
    r = login.respond(body.response, source=source, password=body.password)
    c = r["claims"]
    return {
        "session_token": r["session_token"],
        "subject": c["sub"],
        "owner": c["owner"],
        "expires": c["exp"],
        "amr": c["amr"],
    }


@router.get("/session")
def session(claims: Session) -> dict[str, Any]:
    return claims


@router.post("/logout")
def logout(token: Bearer, login: LoginDep) -> dict[str, str]:
    login.logout(token)
    return {"status": "logged out"}
