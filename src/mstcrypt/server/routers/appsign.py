"""App signing on the platform (guide 6.2): the channel's developer directory (public,
like the certificate directory) and developer registration from a CSR (registration
officers), through :class:`mstcrypt.apps.appsign.service.PlatformChannel`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from mstcrypt.apps.appsign.service import PlatformChannel
from mstcrypt.apps.appsign.verify import key_fingerprint
from mstcrypt.kmc.operators import REGISTRATION_OFFICER, OperatorIdentity
from mstcrypt.pki import CertificationRequest
from mstcrypt.server.deps import KmcDep, require_role

router = APIRouter(tags=["appsign"])
_registration = require_role(REGISTRATION_OFFICER)


class DeveloperRegistration(BaseModel):
    owner: str = Field(min_length=1, max_length=100, description="the developer's account")
    csr: str = Field(min_length=1, max_length=16384, description="PKCS#10 request (PEM)")


@router.get("/appsign/developers")
def developers(kmc: KmcDep) -> list[dict[str, Any]]:
    """The channel's directory of developer (code-signing) certificates."""
    return PlatformChannel(kmc).developers()


@router.post("/admin/appsign/developers", dependencies=[Depends(_registration)])
def register_developer(
    body: DeveloperRegistration,
    kmc: KmcDep,
    who: OperatorIdentity = Depends(_registration),  # noqa: B008
) -> dict[str, Any]:
    """Issue a developer's code-signing certificate (audited)."""
    csr = CertificationRequest.from_pem(body.csr.encode())
    cert = PlatformChannel(kmc).register_developer(csr, owner=body.owner, actor=who.name)
    return {
        "serial": f"{cert.serial:x}",
        "certificate": cert.pem.decode(),
        "key_fingerprint": key_fingerprint(cert),
    }
