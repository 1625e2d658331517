"""Seal server routes (T/ZSA 37-2020 §7.4, Annex C).

* ``/seal/...`` — terminals with a §7.3 session token: two-party key generation,
  co-signing, co-decryption and share refresh for *their own* keys (the owner is the
  session's, never a parameter), the stamper certificate, and the seals they may use.
  Protocol messages travel base64 in JSON (docs/two-party-sm2.md).
* ``/admin/seal/...`` — operators: administrators make and revoke seals, registration
  officers (or administrators) disable a terminal's share (a lost phone), auditors read
  the stamping log.
"""

from __future__ import annotations

import base64
import binascii
import threading
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from mstcrypt.crypto import twoparty as tp
from mstcrypt.errors import AuthenticationError, DecodeError
from mstcrypt.kmc.operators import ADMINISTRATOR, AUDITOR, REGISTRATION_OFFICER
from mstcrypt.server.deps import Session, require_role, session

__all__ = ["router"]

_lock = threading.Lock()


def seal_service(request: Request) -> Any:
    """The app's SealService, made on first use (it needs an initialised CA)."""
    state = request.app.state
    svc = getattr(state, "seal_service", None)
    if svc is None:
        with _lock:
            svc = getattr(state, "seal_service", None)
            if svc is None:
                from mstcrypt.apps.seal.service import SealService

                svc = SealService(state.kmc, server_name=state.settings.login_server_name)
                state.seal_service = svc
    return svc


Seals = Annotated[Any, Depends(seal_service)]

MAX_B64 = 24 * 1024 * 1024  # a TBS_Sign with its seal picture


class Message(BaseModel):
    message: str = Field(max_length=MAX_B64)


class CsrBody(BaseModel):
    csr: str = Field(max_length=64 * 1024)


class SealCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    picture: str = Field(max_length=8 * 1024 * 1024)
    picture_type: str = Field(max_length=8)
    width: int = Field(ge=1, le=1000)
    height: int = Field(ge=1, le=1000)
    valid_start: datetime
    valid_end: datetime
    stampers: list[str] = Field(min_length=1, max_length=100)
    seal_type: int = Field(default=1, ge=1, le=2)


class ReasonBody(BaseModel):
    reason: str = Field(default="", max_length=255)


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{what} is not valid base64") from None


def _out(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _owner(claims: dict[str, Any]) -> str:
    owner = claims.get("owner")
    if not isinstance(owner, str) or not owner:
        raise AuthenticationError("this session has no platform owner")
    return owner


terminal_router = APIRouter(prefix="/seal", tags=["seal"], dependencies=[Depends(session)])


@terminal_router.post("/keys")
def keygen_start(body: Message, claims: Session, seals: Seals) -> dict[str, str]:
    """KG1 → KG2: start a two-party key generation; returns the new key's id."""
    key_id, kg2 = seals.keygen_start(_owner(claims), _b64(body.message, "message"))
    return {"key_id": key_id, "message": _out(kg2)}


@terminal_router.get("/keys")
def my_keys(claims: Session, seals: Seals) -> list[dict[str, Any]]:
    return seals.keys_of(_owner(claims))  # type: ignore[no-any-return]


@terminal_router.post("/keys/{key_id}/keygen")
def keygen_finish(key_id: str, body: Message, claims: Session, seals: Seals) -> dict[str, str]:
    """KG3 → KG4: finish key generation (the joint public key)."""
    return {
        "message": _out(seals.keygen_finish(_owner(claims), key_id, _b64(body.message, "message")))
    }


@terminal_router.post("/keys/{key_id}/certificate")
def certify(key_id: str, body: CsrBody, claims: Session, seals: Seals) -> dict[str, str]:
    """The stamper certificate for the joint key (a co-signed PKCS#10 request)."""
    cert = seals.certify(_owner(claims), key_id, _b64(body.csr, "csr"))
    return {"certificate": cert.pem.decode("ascii"), "serial": f"{cert.serial:x}"}


@terminal_router.post("/keys/{key_id}/sign")
def cosign(key_id: str, body: Message, claims: Session, seals: Seals) -> dict[str, Any]:
    """SG1 → SG2 (co-signature), or SG3 (the final signature, checked and recorded)."""
    owner, msg = _owner(claims), _b64(body.message, "message")
    if tp.message_type(msg) == tp.MessageType.SG3:
        return {"message": "", **seals.confirm(owner, key_id, msg)}
    return {"message": _out(seals.cosign(owner, key_id, msg))}


@terminal_router.post("/keys/{key_id}/decrypt")
def codecrypt(key_id: str, body: Message, claims: Session, seals: Seals) -> dict[str, str]:
    """DC1 → DC2 (co-decryption; rate-limited and audited)."""
    return {"message": _out(seals.codecrypt(_owner(claims), key_id, _b64(body.message, "message")))}


@terminal_router.post("/keys/{key_id}/refresh")
def refresh(key_id: str, body: Message, claims: Session, seals: Seals) -> dict[str, Any]:
    """RF1 → RF2, or RF3 (commit the refreshed share)."""
    owner, msg = _owner(claims), _b64(body.message, "message")
    if tp.message_type(msg) == tp.MessageType.RF3:
        return {"message": "", "version": seals.refresh_finish(owner, key_id, msg)}
    return {"message": _out(seals.refresh_start(owner, key_id, msg))}


@terminal_router.get("/seals")
def my_seals(claims: Session, seals: Seals) -> list[dict[str, Any]]:
    """The seals the caller is an authorised stamper of."""
    return seals.seals_for(_owner(claims))  # type: ignore[no-any-return]


@terminal_router.get("/seals/{es_id}")
def get_seal(es_id: str, claims: Session, seals: Seals) -> dict[str, str]:
    """The DER SESeal (base64)."""
    _owner(claims)
    return {"es_id": es_id, "seal": _out(seals.seal(es_id[:64]).der)}


administrator = require_role(ADMINISTRATOR)
key_officers = require_role(REGISTRATION_OFFICER, ADMINISTRATOR)
auditors = require_role(AUDITOR, ADMINISTRATOR)
Administrator = Annotated[Any, Depends(administrator)]
KeyOfficer = Annotated[Any, Depends(key_officers)]

admin_router = APIRouter(prefix="/admin/seal", tags=["seal administration"])


@admin_router.post("/seals")
def make_seal(body: SealCreate, who: Administrator, seals: Seals) -> dict[str, str]:
    """Make a seal (image, unit, validity, authorised stampers), signed by the maker."""
    seal = seals.make_seal(
        name=body.name,
        picture_type=body.picture_type,
        picture=_b64(body.picture, "picture"),
        width=body.width,
        height=body.height,
        valid_start=body.valid_start,
        valid_end=body.valid_end,
        stampers=body.stampers,
        seal_type=body.seal_type,
        actor=f"operator:{who.name}",
    )
    return {"es_id": seal.info.es_id, "seal": _out(seal.der)}


@admin_router.post("/seals/{es_id}/revoke")
def revoke_seal(es_id: str, who: Administrator, seals: Seals) -> dict[str, str]:
    seals.revoke_seal(es_id[:64], actor=f"operator:{who.name}")
    return {"es_id": es_id, "state": "revoked"}


@admin_router.post("/keys/{key_id}/disable")
def disable_key(key_id: str, body: ReasonBody, who: KeyOfficer, seals: Seals) -> dict[str, str]:
    """Disable the server share of a terminal's seal key (a lost phone)."""
    seals.set_key_state(key_id, enabled=False, actor=f"operator:{who.name}", reason=body.reason)
    return {"key_id": key_id, "state": "disabled"}


@admin_router.post("/keys/{key_id}/enable")
def enable_key(key_id: str, body: ReasonBody, who: KeyOfficer, seals: Seals) -> dict[str, str]:
    seals.set_key_state(key_id, enabled=True, actor=f"operator:{who.name}", reason=body.reason)
    return {"key_id": key_id, "state": "active"}


@admin_router.post("/owners/{owner}/disable")
def disable_owner(owner: str, body: ReasonBody, who: KeyOfficer, seals: Seals) -> dict[str, Any]:
    """Disable every seal key of an owner (a lost phone)."""
    n = seals.disable_owner(owner[:128], actor=f"operator:{who.name}", reason=body.reason)
    return {"owner": owner, "disabled": n}


@admin_router.get("/stampings", dependencies=[Depends(auditors)])
def stampings(
    seals: Seals,
    es_id: Annotated[str | None, Query(max_length=64)] = None,
    owner: Annotated[str | None, Query(max_length=128)] = None,
) -> list[dict[str, Any]]:
    """The stamping log: who co-signed which document digest with which seal, when."""
    return seals.stampings(es_id=es_id, owner=owner)  # type: ignore[no-any-return]


router = APIRouter()
router.include_router(terminal_router)
router.include_router(admin_router)
