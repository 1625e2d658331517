"""Operator routes, one router per role (:mod:`mstcrypt.kmc.operators`); each declares
its role once. Operators themselves are registered only at the console."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import DecodeError, PolicyError
from mstcrypt.kmc.audit import ChainReport
from mstcrypt.kmc.enrollment import code_names
from mstcrypt.kmc.operators import (
    ADMINISTRATOR,
    AUDITOR,
    KEY_RECOVERY_OFFICER,
    REGISTRATION_OFFICER,
    OperatorIdentity,
)
from mstcrypt.pki import Profile
from mstcrypt.server.deps import CaDep, KmcDep, LoginDep, SettingsDep, require_role
from mstcrypt.server.schemas import (
    BackupRequest,
    CodeRequest,
    DistributeRequest,
    FileRecoveryCreate,
    GroupChange,
    GroupCreate,
    KeyRevokeRequest,
    OwnerRequest,
    PasswordBody,
    RecoveryApproval,
    RecoveryCreate,
    RevokeRequest,
    RotateRequest,
)

registration = require_role(REGISTRATION_OFFICER)
recovery_officer = require_role(KEY_RECOVERY_OFFICER)
administrator = require_role(ADMINISTRATOR)
auditor = require_role(AUDITOR, ADMINISTRATOR)
key_readers = require_role(REGISTRATION_OFFICER, KEY_RECOVERY_OFFICER, AUDITOR, ADMINISTRATOR)

Registration = Annotated[OperatorIdentity, Depends(registration)]
RecoveryOfficer = Annotated[OperatorIdentity, Depends(recovery_officer)]
Administrator = Annotated[OperatorIdentity, Depends(administrator)]

ra_router = APIRouter(prefix="/admin", tags=["registration"], dependencies=[Depends(registration)])
recovery_router = APIRouter(
    prefix="/admin", tags=["recovery"], dependencies=[Depends(recovery_officer)]
)
admin_router = APIRouter(
    prefix="/admin", tags=["administration"], dependencies=[Depends(administrator)]
)
audit_router = APIRouter(prefix="/admin", tags=["audit"], dependencies=[Depends(auditor)])
read_router = APIRouter(prefix="/admin", tags=["keys"], dependencies=[Depends(key_readers)])

routers = [ra_router, recovery_router, admin_router, audit_router, read_router]


def _pub(hexstr: str) -> SM2PublicKey:
    try:
        raw = bytes.fromhex(hexstr)
    except ValueError:
        raise DecodeError("public key must be hex") from None
    return SM2PublicKey.from_bytes(raw)


def _profile(value: str) -> Profile:
    try:
        return Profile(value)
    except ValueError:
        raise PolicyError(f"unknown profile {value!r}") from None


# -- registration officer ------------------------------------------------------------------
@ra_router.post("/enrollment-codes")
def new_code(body: CodeRequest, who: Registration, kmc: KmcDep) -> dict[str, Any]:
    profile = _profile(body.profile)
    code, expires = kmc.create_enrollment_code(
        owner=body.owner,
        subject=body.subject,
        profile=profile,
        ttl=timedelta(seconds=body.ttl_seconds),
        actor=who.name,
        dns_names=body.dns_names,
        ip_addresses=body.ip_addresses,
    )
    return {
        "code": code,
        "owner": body.owner,
        "expires_at": expires.isoformat(),
        "names": code_names(profile, body.dns_names, body.ip_addresses),
    }


@ra_router.post("/enrollment-codes/{code_id}/expire")
def expire_code(code_id: str, who: Registration, kmc: KmcDep) -> dict[str, str]:
    """End an unused terminal enrollment code now (its id: ``enrollment_id`` in the audit
    record of its creation, or the console's list of open codes)."""
    kmc.enrollment.expire_code(code_id, actor=who.name)
    return {"enrollment_id": code_id, "status": "expired"}


@ra_router.post("/certificates/{serial}/revoke")
def revoke_certificate(
    serial: str, body: RevokeRequest, who: Registration, ca: CaDep
) -> dict[str, Any]:
    revoked = ca.revoke(serial, reason=body.reason, actor=who.name)
    return {"serial": serial, "status": "revoked", "revoked": revoked}


@ra_router.post("/keys")
def generate_key(body: OwnerRequest, who: Registration, kmc: KmcDep) -> dict[str, str]:
    return {"key_id": kmc.generate_key(body.owner, actor=who.name)}


@ra_router.post("/keys/rotate")
def rotate_key(body: RotateRequest, who: Registration, kmc: KmcDep) -> dict[str, Any]:
    if body.terminal_public_key is None:
        key_id, _, cert = kmc.rotate_key(body.owner, subject=body.subject, actor=who.name)
        return {
            "key_id": key_id,
            "delivery": "pending",
            "encryption_certificate": cert.pem.decode(),
        }
    key_id, env, cert = kmc.rotate_key(
        body.owner, _pub(body.terminal_public_key), subject=body.subject, actor=who.name
    )
    return {
        "key_id": key_id,
        "enveloped_key": base64.b64encode(env).decode(),
        "encryption_certificate": cert.pem.decode(),
    }


@ra_router.post("/keys/{key_id}/distribute")
def distribute_key(
    key_id: str, body: DistributeRequest, who: Registration, kmc: KmcDep
) -> dict[str, Any]:
    env, cert = kmc.distribute_key(
        key_id, _pub(body.terminal_public_key), subject=body.subject, actor=who.name
    )
    return {
        "enveloped_key": base64.b64encode(env).decode(),
        "encryption_certificate": cert.pem.decode(),
    }


@ra_router.post("/keys/{key_id}/revoke")
def revoke_key(
    key_id: str, who: Registration, kmc: KmcDep, body: KeyRevokeRequest | None = None
) -> dict[str, str]:
    kmc.revoke_key(key_id, reason=(body or KeyRevokeRequest()).reason, actor=who.name)
    return {"key_id": key_id, "operation": "revoke", "status": "done"}


@ra_router.post("/groups")
def create_group(body: GroupCreate, who: Registration, kmc: KmcDep) -> dict[str, Any]:
    version = kmc.create_group(body.id, body.members, actor=who.name)
    return {"group": body.id, "version": version, "members": kmc.group_members(body.id)}


@ra_router.post("/groups/{group}/members")
def change_group(group: str, body: GroupChange, who: Registration, kmc: KmcDep) -> dict[str, Any]:
    version = kmc.change_group(group, add=body.add, remove=body.remove, actor=who.name)
    return {"group": group, "version": version, "members": kmc.group_members(group)}


@ra_router.post("/login-passwords/{owner}")
def set_login_password(
    owner: str, body: PasswordBody, who: Registration, login: LoginDep
) -> dict[str, str]:
    login.set_password(owner, body.password, actor=who.name)
    return {"owner": owner, "status": "password set"}


# -- key-recovery officers (dual control) --------------------------------------------------
@recovery_router.post("/recovery")
def request_recovery(body: RecoveryCreate, who: RecoveryOfficer, kmc: KmcDep) -> dict[str, Any]:
    rid = kmc.request_recovery(
        body.key_id, _pub(body.recipient_public_key), reason=body.reason, actor=who.name
    )
    return {"request_id": rid, **kmc.recovery_result(rid)}


@recovery_router.post("/file-recovery")
def request_file_recovery(
    body: FileRecoveryCreate, who: RecoveryOfficer, kmc: KmcDep
) -> dict[str, Any]:
    try:
        escrow = base64.b64decode(body.escrow_stanza, validate=True)
    except ValueError:
        raise DecodeError("escrow_stanza must be base64") from None
    rid = kmc.request_file_recovery(
        escrow, _pub(body.recipient_public_key), reason=body.reason, actor=who.name
    )
    return {"request_id": rid, **kmc.recovery_result(rid)}


@recovery_router.get("/recovery/{request_id}")
def recovery_status(request_id: str, kmc: KmcDep) -> dict[str, Any]:
    """What the second officer reviews: requester, reason, owner, recipient fingerprint."""
    return kmc.recovery_result(request_id)


@recovery_router.post("/recovery/{request_id}/approve")
def approve_recovery(
    request_id: str, body: RecoveryApproval, who: RecoveryOfficer, kmc: KmcDep
) -> dict[str, Any]:
    kmc.approve_recovery(
        request_id, actor=who.name, recipient_fingerprint=body.recipient_fingerprint
    )
    return kmc.recovery_result(request_id)


# -- administrators ------------------------------------------------------------------------
@admin_router.post("/keys/{key_id}/archive")
def archive_key(key_id: str, who: Administrator, kmc: KmcDep) -> dict[str, str]:
    kmc.archive_key(key_id, actor=who.name)
    return {"key_id": key_id, "operation": "archive", "status": "done"}


@admin_router.post("/keys/{key_id}/destroy")
def destroy_key(key_id: str, who: Administrator, kmc: KmcDep) -> dict[str, str]:
    kmc.destroy_key(key_id, actor=who.name)
    return {"key_id": key_id, "operation": "destroy", "status": "done"}


@admin_router.post("/backup", response_class=StreamingResponse)
def backup(body: BackupRequest, who: Administrator, kmc: KmcDep) -> StreamingResponse:
    """The encrypted backup (format 2), streamed as it is read from one snapshot."""
    return StreamingResponse(
        kmc.backup_stream(body.passphrase, actor=who.name),
        media_type="application/octet-stream",
    )


@admin_router.post("/audit/checkpoint")
def checkpoint(kmc: KmcDep) -> dict[str, Any]:
    return {"signed_seq": kmc.checkpoint()}


# -- auditors (and administrators) ---------------------------------------------------------
@audit_router.get("/audit/verify")
def verify_audit(kmc: KmcDep, settings: SettingsDep) -> dict[str, Any]:
    """Incremental verification only: the newest signed checkpoint's signature, then at
    most ``MSTCRYPT_AUDIT_VERIFY_LIMIT`` records after it (bounded work, on a snapshot
    that blocks no writer). The full and range verifications are console commands
    (``mstcrypt audit verify``)."""
    return report_json(kmc.verify_audit(incremental=True, limit=settings.audit_verify_limit))


def report_json(r: ChainReport) -> dict[str, Any]:
    return {
        "ok": r.ok,
        "mode": r.mode,
        "records": r.records,
        "checkpoints": r.checkpoints,
        "anchor_seq": r.anchor_seq,
        "from_seq": r.from_seq,
        "to_seq": r.to_seq,
        "head_seq": r.head_seq,
        "complete": r.complete,
        "first_bad_seq": r.first_bad_seq,
        "problem": r.problem,
        "notes": r.notes,
    }


# -- any operator role that works with keys ------------------------------------------------
@read_router.get("/keys")
def list_keys(
    kmc: KmcDep, owner: Annotated[str, Query(min_length=1, max_length=128)]
) -> list[dict[str, Any]]:
    return kmc.keys(owner)
