"""Enrollment: the caller proves itself with a one-time code (in the body), rate-limited
per source address."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter

from mstcrypt.server.deps import KmcDep, SettingsDep, Source
from mstcrypt.server.errors import RateLimited
from mstcrypt.server.schemas import EnrollRequest

router = APIRouter(tags=["enrollment"])


@router.post("/enroll")
def enroll(
    body: EnrollRequest, kmc: KmcDep, settings: SettingsDep, source: Source
) -> dict[str, Any]:
    if not kmc.allow(f"enroll:{source}", limit=settings.enroll_rate):
        raise RateLimited("too many enrollment attempts from this address; retry later")
    e = kmc.enroll(body.code, body.csr.encode(), source=source)
    return {
        "owner": e.owner,
        "key_id": e.key_id,
        "sign_certificate": e.sign_certificate.pem.decode(),
        "encryption_certificate": e.encryption_certificate.pem.decode(),
        "enveloped_key": base64.b64encode(e.enveloped_key).decode(),
        "chain": [c.pem.decode() for c in e.chain],
    }
