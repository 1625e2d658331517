"""Terminal routes: a §7.3 session token, and only the caller's own keys — the member
is the session's owner, never a parameter."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from mstcrypt.errors import AuthenticationError
from mstcrypt.formats._der import pem_encode
from mstcrypt.kmc.context import NotFoundError
from mstcrypt.server.deps import KmcDep, Session, session
from mstcrypt.server.schemas import MAX_VERSION

router = APIRouter(prefix="/kmc", tags=["terminal"], dependencies=[Depends(session)])


def _member(claims: dict[str, Any]) -> str:
    owner = claims.get("owner")
    if not isinstance(owner, str) or not owner:
        raise AuthenticationError("this session has no platform owner")
    return owner


@router.get("/kdk")
def kdk(claims: Session, kmc: KmcDep) -> dict[str, Any]:
    """The caller's current KDK, SM2-encrypted to the caller's encryption key."""
    member = _member(claims)
    return kmc.kdk_delivery(member, actor=f"terminal:{member}")


@router.get("/groups/{group}/key")
def group_key(
    group: str,
    claims: Session,
    kmc: KmcDep,
    version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
) -> dict[str, Any]:
    """A group key (current, or an older version since the caller joined) wrapped under
    the caller's KDK."""
    if len(group) > 64:
        raise NotFoundError("no such group for this member")
    return kmc.groups.group_key_for(group, _member(claims), version)


# -- rotated encryption keys (operator-initiated rotation, picked up by the terminal) ----
@router.get("/keys/pending")
def pending_keys(claims: Session, kmc: KmcDep) -> dict[str, Any]:
    """The caller's rotated encryption keys not collected yet, oldest version first:
    each an SM2EnvelopedKey to the caller's signing key and its certificate."""
    member = _member(claims)
    return {
        "owner": member,
        "keys": [
            {
                "key_id": k["key_id"],
                "version": k["version"],
                "enveloped_key": base64.b64encode(k["enveloped_key"]).decode(),
                "encryption_certificate": pem_encode(
                    k["encryption_certificate"], "CERTIFICATE"
                ).decode(),
            }
            for k in kmc.pending_keys(member)
        ],
    }


@router.post("/keys/{key_id}/collected")
def key_collected(key_id: str, claims: Session, kmc: KmcDep) -> dict[str, Any]:
    """The terminal installed the key: the delivery is closed and its envelope dropped.
    Another member's key answers as a missing one (404)."""
    member = _member(claims)
    version = kmc.collect_key(member, key_id, actor=f"terminal:{member}")
    return {"key_id": key_id, "version": version, "status": "collected"}
