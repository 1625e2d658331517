"""OCSP over HTTP (RFC 6960 Appendix A, RFC 5019): public, like the CRLs — trust comes
from the responder's signature, not from the channel.

* ``POST /ocsp`` with ``Content-Type: application/ocsp-request`` and the DER request;
* ``GET /ocsp/{base64}``: the DER request in base64 (URL-encoded, or base64url),
  for requests small enough to fit a URL; HTTP caches may keep the answer:
  ``Cache-Control: public, max-age`` up to the response's nextUpdate, ``ETag``,
  ``Last-Modified`` (thisUpdate) and ``Expires`` (nextUpdate) — but never for a
  request with a nonce or an error.

Every answer is an ``application/ocsp-response`` with status 200, errors included (an
OCSPResponse with malformedRequest, unauthorized, tryLater…), except when a source
address exceeds its rate (``MSTCRYPT_OCSP_RATE`` requests per minute per address, per
instance: flood protection for the signing path) — then 429 with ``Retry-After`` and
a tryLater OCSPResponse.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from mstcrypt.kmc.ocsp import OcspAnswer
from mstcrypt.pki import _common as c
from mstcrypt.pki.ocsp import error_response
from mstcrypt.server.deps import KmcDep, SettingsDep, Source

__all__ = ["MAX_REQUEST_BYTES", "OCSP_REQUEST", "OCSP_RESPONSE", "router"]

OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
#: larger requests are malformed (16 CertIDs with SHA-256 take about 1.7 KiB)
MAX_REQUEST_BYTES = 4096

router = APIRouter(tags=["public"])


class _Limiter:
    """Per-instance fixed-window limit per source address (IPv6 by /64)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = -1
        self._counts: dict[str, int] = {}

    def allow(self, source: str, limit: int) -> bool:
        from mstcrypt.apps.login.service import source_bucket

        window = int(time.time()) // 60
        key = source_bucket(source)
        with self._lock:
            if window != self._window:
                self._window, self._counts = window, {}
            n = self._counts.get(key, 0) + 1
            self._counts[key] = n
        return n <= limit


def _limiter(request: Request) -> _Limiter:
    state = request.app.state
    lim = getattr(state, "ocsp_limiter", None)
    if lim is None:
        lim = state.ocsp_limiter = _Limiter()
    return lim


def _reply(answer: OcspAnswer, *, http_cache: bool) -> Response:
    headers = {"Cache-Control": "no-store"}
    if http_cache and answer.cacheable and answer.next_update and answer.this_update:
        now = datetime.now(UTC)
        max_age = int((answer.next_update - now).total_seconds())
        if max_age > 0:
            headers = {
                "Cache-Control": f"public, max-age={max_age}, no-transform, must-revalidate",
                "ETag": f'"{c.sm3_hex(answer.der)}"',
                "Last-Modified": format_datetime(answer.this_update.astimezone(UTC), usegmt=True),
                "Expires": format_datetime(answer.next_update.astimezone(UTC), usegmt=True),
            }
    return Response(answer.der, media_type=OCSP_RESPONSE, headers=headers)


def _answer(request: Request, kmc: KmcDep, limit: int, source: str, der: bytes) -> OcspAnswer:
    if not _limiter(request).allow(source, limit):
        return OcspAnswer(error_response("try_later"), "rate_limited")
    if not der or len(der) > MAX_REQUEST_BYTES:
        return OcspAnswer(error_response("malformed_request"), "malformed_request")
    return kmc.ocsp.respond(der)


def _limited(answer: OcspAnswer) -> Response | None:
    if answer.status != "rate_limited":
        return None
    return Response(
        answer.der,
        status_code=429,
        media_type=OCSP_RESPONSE,
        headers={"Retry-After": "60", "Cache-Control": "no-store"},
    )


@router.post("/ocsp", response_class=Response)
async def ocsp_post(
    request: Request, kmc: KmcDep, settings: SettingsDep, source: Source
) -> Response:
    """An OCSP request in the body (``application/ocsp-request``)."""
    body = await _body(request)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != OCSP_REQUEST:
        body = b""  # not an OCSP request: malformedRequest
    answer = await run_in_threadpool(_answer, request, kmc, settings.ocsp_rate, source, body)
    return _limited(answer) or _reply(answer, http_cache=False)


async def _body(request: Request) -> bytes:
    """The body, or b"" (malformed) once it exceeds MAX_REQUEST_BYTES — read no further."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_REQUEST_BYTES):
        return b""
    out = bytearray()
    async for chunk in request.stream():
        out += chunk
        if len(out) > MAX_REQUEST_BYTES:
            return b""
    return bytes(out)


@router.get("/ocsp/{request_b64:path}", response_class=Response)
def ocsp_get(
    request_b64: Annotated[str, Path(max_length=2 * MAX_REQUEST_BYTES)],
    request: Request,
    kmc: KmcDep,
    settings: SettingsDep,
    source: Source,
) -> Response:
    """An OCSP request as base64 in the path (RFC 6960 Appendix A.1)."""
    text = request_b64.strip().replace("-", "+").replace("_", "/").replace(" ", "+")
    try:
        der = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        der = b""
    answer = _answer(request, kmc, settings.ocsp_rate, source, der)
    return _limited(answer) or _reply(answer, http_cache=True)
