"""Shared helpers of the seal tests (not a conftest.py: the root conftest is imported by
name elsewhere): a small CA, a seal maker, and a stamper whose key is a two-party SM2 key
(the certificate is issued for the joint public key from a CSR that the two parties
signed together). Each test module makes its ``seal_pki`` fixture with make_seal_pki."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mstcrypt.crypto import twoparty as tp
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.pki import Certificate, Issuer, build_csr
from mstcrypt.pki.names import name
from mstcrypt.pki.profiles import Profile


def cosigner(cs: tp.ClientShare, ss: tp.ServerShare) -> Callable[[bytes], bytes]:
    """A ``sign(message) -> DER`` callable that runs the two-party protocol."""

    def sign(message: bytes) -> bytes:
        client = tp.ClientSigner(cs, message)
        server = tp.ServerSigner(ss)
        sig = client.finish(server.respond(client.start()))
        server.confirm(client.confirmation())
        return sig

    return sign


@dataclass
class SealPki:
    root: Issuer
    maker_key: SM2PrivateKey
    maker_cert: Certificate
    client_share: tp.ClientShare
    server_share: tp.ServerShare
    stamper_cert: Certificate
    other_key: SM2PrivateKey
    other_cert: Certificate

    @property
    def stamper_sign(self) -> Callable[[bytes], bytes]:
        return cosigner(self.client_share, self.server_share)

    def maker_sign(self, message: bytes) -> bytes:
        return self.maker_key.sign(message)


def make_seal_pki() -> SealPki:
    root_key = SM2PrivateKey.generate()
    root = Issuer.self_signed(
        name(C="CN", O="Seal Test", CN="Seal Test Root"), root_key.public_key(), root_key.sign
    )
    maker_key = SM2PrivateKey.generate()
    maker_cert = root.issue(
        subject=name(C="CN", O="Seal Test", CN="Seal maker"),
        public_key=maker_key.public_key(),
        profile=Profile.DEVICE_SIGN,
    )
    c, s = tp.ClientKeyGen(), tp.ServerKeyGen()
    kg4, ss = s.receive_opening(c.receive_server_share(s.receive_commitment(c.start())))
    cs = c.finish(kg4)
    subject = name(C="CN", O="Seal Test", CN="stamper alice")
    csr = build_csr(subject, cs.public_key, cosigner(cs, ss))
    stamper_cert = root.issue(
        subject=csr.subject, public_key=csr.public_key, profile=Profile.DEVICE_SIGN
    )
    other_key = SM2PrivateKey.generate()
    other_cert = root.issue(
        subject=name(C="CN", O="Seal Test", CN="stamper bob"),
        public_key=other_key.public_key(),
        profile=Profile.DEVICE_SIGN,
    )
    return SealPki(root, maker_key, maker_cert, cs, ss, stamper_cert, other_key, other_cert)


def validity(days: int = 365) -> tuple[datetime, datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    return now - timedelta(days=1), now + timedelta(days=days)
