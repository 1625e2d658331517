"""Trusted-boot attestation (``docs/trusted-boot.md`` §7): terminals fetch a nonce and
send a quote with its event log; administrators register golden values per device
model, registration officers assign a model to a terminal owner, auditors read verdicts.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from mstcrypt.apps.boot.service import AttestationService
from mstcrypt.errors import AuthenticationError, DecodeError
from mstcrypt.kmc.operators import ADMINISTRATOR, AUDITOR, REGISTRATION_OFFICER, OperatorIdentity
from mstcrypt.server.deps import KmcDep, Session, require_role, session

__all__ = ["router"]

terminal_router = APIRouter(prefix="/boot", tags=["boot"], dependencies=[Depends(session)])
golden_router = APIRouter(
    prefix="/admin/boot", tags=["boot"], dependencies=[Depends(require_role(ADMINISTRATOR))]
)
device_router = APIRouter(
    prefix="/admin/boot", tags=["boot"], dependencies=[Depends(require_role(REGISTRATION_OFFICER))]
)
verdict_router = APIRouter(
    prefix="/admin/boot",
    tags=["boot"],
    dependencies=[Depends(require_role(AUDITOR, ADMINISTRATOR))],
)
router = APIRouter()  # the one router server/app.py includes


def _service(kmc: KmcDep) -> AttestationService:
    return AttestationService(kmc.ctx)


Service = Annotated[AttestationService, Depends(_service)]


class AttestRequest(BaseModel):
    quote: str = Field(min_length=4, max_length=400, description="base64 boot quote")
    events: list[dict[str, Any]] = Field(max_length=64)


class GoldenRequest(BaseModel):
    model: str = Field(min_length=1, max_length=32)
    stage: str = Field(min_length=1, max_length=32)
    digest: str = Field(min_length=64, max_length=64, description="manifest SM3, hex")


class DeviceRequest(BaseModel):
    owner: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=32)


def _caller(claims: dict[str, Any]) -> tuple[str, str]:
    owner, serial = claims.get("owner"), claims.get("serial")
    if not isinstance(owner, str) or not owner or not isinstance(serial, str):
        raise AuthenticationError("this session has no platform owner")
    return owner, serial


@terminal_router.post("/challenge")
def challenge(claims: Session, svc: Service) -> dict[str, Any]:
    """A single-use nonce (5 minutes) for this session's device."""
    return svc.challenge(*_caller(claims))


@terminal_router.post("/attest")
def attest(body: AttestRequest, claims: Session, svc: Service) -> dict[str, Any]:
    """Appraise a quote signed by this session's certificate key; the verdict (trusted,
    modified) is returned and audited; a quote that cannot be accepted is refused (403)
    and audited as rejected."""
    try:
        quote = base64.b64decode(body.quote, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("quote must be base64") from None
    return svc.attest(*_caller(claims), quote, body.events)


@golden_router.post("/golden")
def add_golden(
    body: GoldenRequest,
    who: Annotated[OperatorIdentity, Depends(require_role(ADMINISTRATOR))],
    svc: Service,
) -> dict[str, str]:
    svc.add_golden(body.model, body.stage, body.digest, actor=who.name)
    return {"model": body.model, "stage": body.stage, "digest": body.digest.lower()}


@device_router.post("/devices")
def set_device(
    body: DeviceRequest,
    who: Annotated[OperatorIdentity, Depends(require_role(REGISTRATION_OFFICER))],
    svc: Service,
) -> dict[str, str]:
    svc.set_device_model(body.owner, body.model, actor=who.name)
    return {"owner": body.owner, "model": body.model}


@verdict_router.get("/attestations")
def list_attestations(
    svc: Service,
    owner: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    return {"attestations": svc.attestations(owner, limit)}


for _r in (terminal_router, golden_router, device_router, verdict_router):
    router.include_router(_r)
