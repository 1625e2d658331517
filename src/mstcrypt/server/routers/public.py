"""Public routes: no caller identity (trust comes from the signatures, not the channel)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
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


def _crl_response(request: Request, kmc: Any, ca: str, kind: str) -> Response:
    """A CRL with its validators: ETag = CA, kind and CRL number; Cache-Control max-age
    up to the next publisher run (never past nextUpdate); If-None-Match → 304."""
    pub = kmc.ca.current_crl(_ca_name(ca), kind)
    etag = f'"{ca}-{kind}-{pub.number}"'
    now = datetime.now(UTC)
    max_age = int(
        max(0.0, min((pub.next_update - now).total_seconds(), kmc.ca.crl_policy.interval))
    )
    headers = {
        "ETag": etag,
        "Cache-Control": f"public, max-age={max_age}, must-revalidate",
        "Last-Modified": format_datetime(pub.this_update.astimezone(UTC), usegmt=True),
        "Expires": format_datetime(pub.next_update.astimezone(UTC), usegmt=True),
    }
    inm = request.headers.get("if-none-match", "")
    if inm and any(t.strip() in (etag, f"W/{etag}", "*") for t in inm.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(pub.der, media_type="application/pkix-crl", headers=headers)


@router.get("/crl/{ca}-delta.crl", response_class=Response)
def delta_crl(ca: str, request: Request, kmc: KmcDep) -> Response:
    """The newest delta CRL (RFC 5280 §5.2.4) of ``ca``: revocations since its base."""
    return _crl_response(request, kmc, ca, "delta")


@router.get("/crl/{ca}.crl", response_class=Response)
def crl(ca: str, request: Request, kmc: KmcDep) -> Response:
    return _crl_response(request, kmc, ca, "complete")


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
