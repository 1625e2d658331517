"""A small PKI for the CMS tests: a root CA, a signer (alice) and two encryption
recipients (bob, carol), each with its SM2 key."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from mstcrypt import pki
from mstcrypt.crypto.sm2 import SM2PrivateKey


@dataclass(frozen=True)
class Party:
    key: SM2PrivateKey
    cert: pki.Certificate


@dataclass(frozen=True)
class Kit:
    root: pki.Issuer
    root_key: SM2PrivateKey
    alice: Party  # signing certificate
    alice_enc: Party
    bob: Party  # encryption certificate
    carol: Party
    mallory: Party  # another signing certificate from the same CA


def _party(root: pki.Issuer, cn: str, profile: pki.Profile) -> Party:
    key = SM2PrivateKey.generate()
    cert = root.issue(
        subject=pki.name(C="CN", O="mstcrypt test", CN=cn),
        public_key=key.public_key(),
        profile=profile,
    )
    return Party(key, cert)


@cache
def kit() -> Kit:
    root_key = SM2PrivateKey.generate()
    root = pki.Issuer.self_signed(
        pki.name(C="CN", O="mstcrypt test", CN="CMS Test Root"),
        root_key.public_key(),
        lambda tbs: root_key.sign(tbs),
    )
    return Kit(
        root=root,
        root_key=root_key,
        alice=_party(root, "alice", pki.Profile.DEVICE_SIGN),
        alice_enc=_party(root, "alice", pki.Profile.DEVICE_ENC),
        bob=_party(root, "bob", pki.Profile.DEVICE_ENC),
        carol=_party(root, "carol", pki.Profile.DEVICE_ENC),
        mallory=_party(root, "mallory", pki.Profile.DEVICE_SIGN),
    )
