"""TLCP 1.1 (GB/T 38636-2020, formerly GM/T 0024-2014) as sans-IO state machines.

T/ZSA 37-2020 §6.4 (network transport encryption) secures the channel between the
terminal (MST) and the enterprise mobile access gateway with GM/T 0024; this package is
that protocol. Bytes in, bytes and events out, no sockets, clocks or threads inside::

    from mstcrypt.protocols.tlcp import TLCPClient, TLCPContext, HandshakeComplete

    client = TLCPClient(TLCPContext(trust_anchors=[root]), server_name="gw.example.com")
    sock.sendall(client.data_to_send())
    while not client.handshake_complete:
        for event in client.receive_data(sock.recv(65536)):
            ...
        sock.sendall(client.data_to_send())

Cipher suites ECC_SM4_CBC_SM3 (0xE013), ECC_SM4_GCM_SM3 (0xE053), ECDHE_SM4_CBC_SM3
(0xE011) and ECDHE_SM4_GCM_SM3 (0xE051); dual certificates; optional or required client
authentication; resumption by session ID; SNI; peer profiles for GmSSL and Tongsuo
(:class:`PeerProfile`, ``TLCPContext.for_peer``). See docs/tlcp.md.
"""

from mstcrypt.protocols.tlcp.client import ClientFlight, TLCPClient
from mstcrypt.protocols.tlcp.constants import (
    DEFAULT_CIPHER_SUITES,
    TLCP_VERSION,
    AlertDescription,
    AlertLevel,
    CertificateVerifyForm,
    CipherSuite,
    ClientAuth,
    ContentType,
    ECDHEParamsEncoding,
    HandshakeType,
)
from mstcrypt.protocols.tlcp.context import (
    Credentials,
    KeyExchanger,
    Session,
    SessionCache,
    TLCPContext,
)
from mstcrypt.protocols.tlcp.errors import TLCPError
from mstcrypt.protocols.tlcp.events import (
    AlertReceived,
    ApplicationData,
    ConnectionClosed,
    Event,
    HandshakeComplete,
)
from mstcrypt.protocols.tlcp.profiles import FormRetry, PeerProfile
from mstcrypt.protocols.tlcp.server import TLCPServer

__all__ = [
    "DEFAULT_CIPHER_SUITES",
    "TLCP_VERSION",
    "AlertDescription",
    "AlertLevel",
    "AlertReceived",
    "ApplicationData",
    "CertificateVerifyForm",
    "CipherSuite",
    "ClientAuth",
    "ClientFlight",
    "ConnectionClosed",
    "ContentType",
    "Credentials",
    "ECDHEParamsEncoding",
    "Event",
    "FormRetry",
    "HandshakeComplete",
    "HandshakeType",
    "KeyExchanger",
    "PeerProfile",
    "Session",
    "SessionCache",
    "TLCPClient",
    "TLCPContext",
    "TLCPError",
    "TLCPServer",
]
