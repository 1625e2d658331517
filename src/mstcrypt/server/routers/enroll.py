"""Enrollment: the caller proves itself with a one-time code (in the body), rate-limited
per source address."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from mstcrypt.server.deps import CaDep, KmcDep, SettingsDep, Source
from mstcrypt.server.errors import RateLimited
from mstcrypt.server.schemas import EnrollRequest

router = APIRouter(tags=["enrollment"])


@router.post("/enroll")
def enroll(
    body: EnrollRequest, kmc: KmcDep, ca: CaDep, settings: SettingsDep, source: Source
) -> dict[str, Any]:
    if not kmc.allow(f"enroll:{source}", limit=settings.enroll_rate):
        raise RateLimited("too many enrollment attempts from this address; retry later")
    return ca.enroll(body.code, body.csr.encode(), source=source)
