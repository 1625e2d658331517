"""``GET /metrics``: the platform in the Prometheus text format
(:mod:`mstcrypt.apps.console.metrics`). Counts only — no name, serial or secret — so it
is public by default, like ``/health``; with ``MSTCRYPT_METRICS_TOKEN`` set, a scraper
must send ``Authorization: Bearer <that token>``."""

from __future__ import annotations

import hmac
import os
import threading

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)

from mstcrypt.apps.console.metrics import PlatformCollector
from mstcrypt.errors import AuthenticationError
from mstcrypt.server.deps import KmcDep

router = APIRouter(tags=["monitoring"])
_lock = threading.Lock()


def _registry(request: Request, kmc: object) -> CollectorRegistry:
    state = request.app.state
    with _lock:
        reg = getattr(state, "metrics_registry", None)
        if reg is None or getattr(state, "metrics_kmc", None) is not kmc:
            reg = CollectorRegistry(auto_describe=False)
            reg.register(PlatformCollector(kmc))  # type: ignore[arg-type]
            ProcessCollector(registry=reg)
            state.metrics_registry, state.metrics_kmc = reg, kmc
    return reg


@router.get("/metrics", response_class=Response)
def metrics(request: Request, kmc: KmcDep) -> Response:
    token = os.environ.get("MSTCRYPT_METRICS_TOKEN", "")
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise AuthenticationError("the metrics endpoint needs its bearer token")
    return Response(generate_latest(_registry(request, kmc)), media_type=CONTENT_TYPE_LATEST)
