"""Helpers for tests, benchmarks and demos: a throw-away dual-certificate PKI, an
in-memory driver for a client/server pair and a record splitter. Nothing here is for
production use (the keys live in memory and the CA key is discarded)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.pki import Certificate, Issuer, Profile, name
from mstcrypt.protocols.tlcp.client import TLCPClient
from mstcrypt.protocols.tlcp.context import Credentials
from mstcrypt.protocols.tlcp.events import Event
from mstcrypt.protocols.tlcp.server import TLCPServer

__all__ = ["Identity", "TestPKI", "join_records", "pump", "split_records"]


@dataclass
class Identity:
    """Dual certificates with their private keys (kept for tests that need them)."""

    sign_certificate: Certificate
    sign_key: SM2PrivateKey = field(repr=False)
    enc_certificate: Certificate
    enc_key: SM2PrivateKey = field(repr=False)
    chain: tuple[Certificate, ...] = ()

    def credentials(self) -> Credentials:
        return Credentials.from_keys(
            self.sign_certificate, self.sign_key, self.enc_certificate, self.enc_key, self.chain
        )


class TestPKI:
    """A root CA that issues gateway (server) and device (client) dual certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, org: str = "mstcrypt test", *, not_before: datetime | None = None):
        self.root_key = SM2PrivateKey.generate()
        self.issuer = Issuer.self_signed(
            name(C="CN", O=org, CN=f"{org} root"),
            self.root_key.public_key(),
            self.root_key.sign,
            not_before=not_before,
        )
        self.org = org

    @property
    def root(self) -> Certificate:
        return self.issuer.certificate

    def identity(
        self,
        common_name: str,
        *,
        server: bool = True,
        names: Sequence[str] = (),
        sign_profile: Profile | str | None = None,
        enc_profile: Profile | str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> Identity:
        sk, ek = SM2PrivateKey.generate(), SM2PrivateKey.generate()
        sp = sign_profile or (Profile.GATEWAY_SIGN if server else Profile.DEVICE_SIGN)
        ep = enc_profile or (Profile.GATEWAY_ENC if server else Profile.DEVICE_ENC)
        subject = name(C="CN", O=self.org, CN=common_name)
        kw = {"not_before": not_before, "not_after": not_after, "subject_alt_names": names}
        sc = self.issuer.issue(subject=subject, public_key=sk.public_key(), profile=sp, **kw)
        ec = self.issuer.issue(subject=subject, public_key=ek.public_key(), profile=ep, **kw)
        return Identity(sc, sk, ec, ek)


def pump(
    client: TLCPClient,
    server: TLCPServer,
    *,
    rounds: int = 8,
    to_server: Callable[[bytes], bytes] | None = None,
    to_client: Callable[[bytes], bytes] | None = None,
) -> tuple[list[Event], list[Event]]:
    """Shuttle bytes between the two until neither has anything to send. The optional
    callables may rewrite each flight (to tamper with it). Returns (client events,
    server events). TLCPError propagates from whichever side detects a failure."""
    cev: list[Event] = []
    sev: list[Event] = []
    for _ in range(rounds):
        c_out = client.data_to_send()
        if c_out:
            sev += server.receive_data(to_server(c_out) if to_server else c_out)
        s_out = server.data_to_send()
        if s_out:
            cev += client.receive_data(to_client(s_out) if to_client else s_out)
        if not c_out and not s_out:
            break
    return cev, sev


def split_records(data: bytes) -> list[tuple[int, int, bytes]]:
    """Records as (content_type, version, fragment); the input must be whole records."""
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        out.append(
            (
                data[pos],
                int.from_bytes(data[pos + 1 : pos + 3], "big"),
                data[pos + 5 : pos + 5 + length],
            )
        )
        pos += 5 + length
    return out


def join_records(records: Sequence[tuple[int, int, bytes]]) -> bytes:
    return b"".join(
        bytes([t]) + v.to_bytes(2, "big") + len(f).to_bytes(2, "big") + f for t, v, f in records
    )
