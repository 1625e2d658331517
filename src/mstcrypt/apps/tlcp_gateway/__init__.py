"""The enterprise mobile access gateway of T/ZSA 37-2020 §6.4 (network transport
encryption): terminals connect with TLCP and client certificates; the gateway forwards to
internal TCP or HTTP services. See :mod:`.gateway` and :mod:`.config`."""

from mstcrypt.apps.tlcp_gateway.asgi import ASGITLCPServer, run_asgi_tlcp, serve_asgi_tlcp
from mstcrypt.apps.tlcp_gateway.config import (
    CredentialsConfig,
    GatewayConfig,
    ListenerConfig,
    Route,
    TrustConfig,
)
from mstcrypt.apps.tlcp_gateway.gateway import SERIAL_HEADER, SUBJECT_HEADER, Gateway
from mstcrypt.apps.tlcp_gateway.trust import (
    TrustMaterial,
    TrustSource,
    file_trust_source,
    kmc_trust_source,
    load_crl,
    load_crl_index,
)

__all__ = [
    "SERIAL_HEADER",
    "SUBJECT_HEADER",
    "ASGITLCPServer",
    "CredentialsConfig",
    "Gateway",
    "GatewayConfig",
    "ListenerConfig",
    "Route",
    "TrustConfig",
    "TrustMaterial",
    "TrustSource",
    "file_trust_source",
    "kmc_trust_source",
    "load_crl",
    "load_crl_index",
    "run_asgi_tlcp",
    "serve_asgi_tlcp",
]
