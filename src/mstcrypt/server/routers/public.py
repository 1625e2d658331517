"""Public routes: no caller identity (trust comes from the signatures, not the channel)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from mstcrypt import __version__
from mstcrypt.errors import PolicyError
from mstcrypt.kmc.context import NotFoundError
from mstcrypt.server.deps import KmcDep

PEM = "application/x-pem-file"
CAS = {"issuing": 0, "root": 1}

router = APIRouter(tags=["public"])


def _ca_name(ca: str) -> str:
    if ca not in CAS:
        raise NotFoundError(f"no CA named {ca!r}")
    return ca


@router.get("/health")
def health(kmc: KmcDep) -> dict[str, Any]:
    return {"status": "ok", "version": __version__, "ca": kmc.is_initialised()}


@router.get("/ca/chain.pem", response_class=Response)
def chain(kmc: KmcDep) -> Response:
    return Response(b"".join(c.pem for c in kmc.chain()), media_type=PEM)


@router.get("/ca/escrow.pem", response_class=Response)
def escrow_certificate(kmc: KmcDep) -> Response:
    """The KMC's key-escrow (file-recovery) encryption certificate, issued under the
    issuing CA with the kmc_escrow_enc profile; terminals validate it before use."""
    return Response(kmc.escrow_certificate().pem, media_type=PEM)


@router.get("/ca/{ca}.pem", response_class=Response)
def ca_certificate(ca: str, kmc: KmcDep) -> Response:
    return Response(kmc.chain()[CAS[_ca_name(ca)]].pem, media_type=PEM)


@router.get("/crl/{ca}.crl", response_class=Response)
def crl(ca: str, kmc: KmcDep) -> Response:
    return Response(kmc.crl(_ca_name(ca)), media_type="application/pkix-crl")


@router.get("/directory/certificates/{serial}", response_class=Response)
def certificate(serial: str, kmc: KmcDep) -> Response:
    if len(serial) > 40:
        raise NotFoundError("no such certificate")
    cert = kmc.certificate(serial)
    return Response(
        cert.pem, media_type=PEM, headers={"X-Certificate-Status": kmc.certificate_status(serial)}
    )


@router.get("/directory/certificates")
def find(
    kmc: KmcDep,
    subject: Annotated[str | None, Query(max_length=512)] = None,
    owner: Annotated[str | None, Query(max_length=128)] = None,
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
        for c in kmc.find_certificates(subject=subject, owner=owner, limit=limit)
    ]


@router.get("/directory/encryption-certificate/{owner}", response_class=Response)
def encryption_certificate(owner: str, kmc: KmcDep) -> Response:
    return Response(kmc.encryption_certificate(owner).pem, media_type=PEM)
